"""Chat formats for instruction-tuned labelers: the prompt becomes the user's turn and its last
line (the answer's lead-in) opens the model's; 'auto' reads the checkpoint's template."""

import types

import jax
import numpy as np
import pytest
from test_labeler import PAIRS, SHORT

from rlaif_jax import models, partitioning
from rlaif_jax.labeling import Labeler, PromptParts, chat, direct_prompt, pair_prompt


def test_wrap_puts_the_lead_in_at_the_start_of_the_models_turn():
  parts = pair_prompt(SHORT, "Why?", "Because.", "No idea.")
  wrapped = chat.FORMATS["chatml"].wrap(parts)
  assert wrapped.text.startswith("<|im_start|>user\nPick one.")
  assert wrapped.text.endswith("<|im_end|>\n<|im_start|>assistant\nPreferred Response=")
  assert wrapped.context == parts.context  # the context is still the part cut to fit
  rating = chat.FORMATS["gemma"].wrap(direct_prompt("summarization", "a post", "a summary"))
  assert rating.text.endswith("a summary\n<end_of_turn>\n<start_of_turn>model\nScore (1-10)=")
  bare = chat.FORMATS["llama3"].wrap(PromptParts("p", "c", "Answer="))  # a suffix that is the lead-in alone
  assert bare.suffix == "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nAnswer="


def test_resolve_names_auto_and_errors():
  smol = types.SimpleNamespace(chat_template="{{'<|im_start|>' + message['role']}}")
  assert chat.resolve("auto", smol).name == "chatml"
  assert chat.resolve("auto", types.SimpleNamespace()) is None  # no template: plain text
  assert chat.resolve(None) is None and chat.resolve("none") is None and chat.resolve("gemma").name == "gemma"
  with pytest.raises(ValueError, match="ModelSource.chat_format='vicuna'; one of None, 'auto', 'chatml'"):
    chat.resolve("vicuna", where="ModelSource.chat_format")


def test_a_labeler_with_a_chat_format_scores_the_wrapped_prompt():
  """The same pair through a plain and a chatml labeler: the second's prompts are the first's
  wrapped, and its probabilities are those of the wrapped text scored plainly."""
  source, mesh = (
    models.ModelSource(config=models.tiny(), seed=3),
    partitioning.make_mesh({"data": 1}, jax.devices()[:1]),
  )
  plain = Labeler.from_source(source, mesh, max_len=512, batch_size=2)
  wrapped = Labeler.from_source(source.replace(chat_format="chatml"), mesh, max_len=512, batch_size=2)
  assert plain.chat is None and wrapped.chat.name == "chatml"
  (a,) = plain.label_pairs(PAIRS[:1], SHORT, return_prompts=True)
  (b,) = wrapped.label_pairs(PAIRS[:1], SHORT, return_prompts=True)
  for order in ("ab", "ba"):
    assert b["prompts"][order].startswith("<|im_start|>user\n") and b["prompts"][order].endswith("Preferred Response=")
    assert "<|im_start|>" not in a["prompts"][order]
  ids = plain.encode(chat.FORMATS["chatml"].wrap(pair_prompt(SHORT, PAIRS[0]["inputs"], PAIRS[0]["response_a"],
                                                            PAIRS[0]["response_b"])))  # fmt: skip
  assert ids == wrapped.encode(pair_prompt(SHORT, PAIRS[0]["inputs"], PAIRS[0]["response_a"], PAIRS[0]["response_b"]))
  assert not np.isclose(a["p1_ab"], b["p1_ab"])
