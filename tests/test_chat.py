"""Chat formats for instruction-tuned labelers: the prompt becomes the user's turn and its last
line (the answer's lead-in) opens the model's; 'auto' reads the checkpoint's template."""

import copy
import types

import jax
import numpy as np
import pytest
from test_labeler import PAIRS, SHORT

from rlaif_jax import data, models, partitioning, trainer
from rlaif_jax.checkpoints import CheckpointError
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
  plain = Labeler.from_source(source, mesh, max_len=256, batch_size=2)
  wrapped = Labeler.from_source(source.replace(chat_format="chatml"), mesh, max_len=256, batch_size=2)
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


# ---- policies in a chat format ------------------------------------------------------------
DIALOGUE = "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.\n\nHuman: And of Italy?\n\nAssistant:"


def test_a_policy_prompt_becomes_turns_ending_where_the_reply_begins():
  chatml, gemma, llama3 = (chat.FORMATS[n] for n in ("chatml", "gemma", "llama3"))
  assert chatml.prompt(DIALOGUE) == (
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"
    "<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n"
  )
  assert gemma.prompt(DIALOGUE) == (
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\nParis.<end_of_turn>\n"
    "<start_of_turn>user\nAnd of Italy?<end_of_turn>\n<start_of_turn>model\n"
  )
  header = "<|start_header_id|>{}<|end_header_id|>\n\n"
  user, assistant = header.format("user"), header.format("assistant")
  tldr = "SUBREDDIT: r/x\nPOST: a post\nTL;DR:"  # not a dialogue: the user's one turn, as it is
  assert llama3.prompt(tldr) == f"{user}{tldr}<|eot_id|>{assistant}"
  assert (
    chatml.prompt("Human: hi\n\nAssistant:")
    == "<|im_start|>user\nHuman: hi\n\nAssistant:<|im_end|>\n<|im_start|>assistant\n"
  )
  assert [f.end_of_turn for f in (chatml, gemma, llama3)] == ["<|im_end|>", "<end_of_turn>", "<|eot_id|>"]


class _Words:
  """A vocabulary whose tokens are words, with the format markers as single tokens."""

  eos_id, pad_id = 1, 0
  chat_template = "{{ '<|im_start|>' + message['role'] }}"

  def __init__(self):
    self.ids = {"<|im_end|>": 7}

  def encode(self, text):
    return [self.ids.setdefault(w, len(self.ids) + 10) for w in text.split(" ") if w]


def test_a_chat_vocabulary_ends_responses_with_the_end_of_turn_token():
  words = _Words()
  vocab = data.with_chat(words, "auto")
  assert isinstance(vocab, data.ChatVocabulary) and vocab.chat.name == "chatml"
  assert (vocab.eos_id, vocab.pad_id, vocab.base is words) == (7, 0, True)  # <|im_end|> is one token
  assert data.with_chat(vocab, "gemma").base is words  # re-wrapping replaces the format
  assert data.with_chat(words, None) is words and data.with_chat(words, "none") is words
  assert data.encoder.context(words, "a b") == (words.encode("a b"), 0)
  ids, head = data.encoder.context(vocab, "a b")
  assert ids == words.encode(chat.FORMATS["chatml"].prompt("a b"))
  assert head == 0  # these words merge the turn's opening with the prompt's first word: no whole head
  copied = copy.deepcopy(vocab)  # no recursion through __getattr__ while the copy is built
  assert (copied.eos_id, copied.chat, copied.base.ids) == (7, vocab.chat, words.ids)
  byte = data.with_chat(data.byte_vocabulary(), "chatml")  # the marker is many byte tokens: EOS stays
  assert byte.eos_id == data.byte_vocabulary().eos_id
  assert data.with_chat(data.byte_vocabulary(), "auto") == data.byte_vocabulary()  # no template: plain text


@pytest.mark.slow
def test_sft_trains_a_chat_policy_on_turns_and_the_generator_prompts_it_in_them(tmp_path):
  """The SFT stage's rows are the chat-format prompt followed by the target and the end of turn,
  and a policy loaded in a chat format samples from the wrapped prompt."""
  import rlaif_jax.tasks  # noqa: F401  (registers tldr_sft)
  from rlaif_jax import generation, sampling
  from rlaif_jax.stages.sft import run_sft

  vocab = data.with_chat(data.byte_vocabulary(), "chatml")
  examples = [
    {"inputs_pretokenized": DIALOGUE.encode(), "targets_pretokenized": b" Rome.", "inputs": [5], "targets": [6]}
  ]
  (row,) = data.encoder.sft_examples(examples, vocab)
  assert vocab.decode(row["inputs"]) == chat.FORMATS["chatml"].prompt(DIALOGUE)
  assert row["targets"] == list(vocab.encode("Rome.")) + [vocab.eos_id]  # the turn's text, stripped
  assert row["head"] == len(vocab.encode("<|im_start|>user\n"))
  (plain,) = data.encoder.sft_examples(examples, data.byte_vocabulary())  # plain text: the texts as they are
  assert (plain["inputs"], plain["head"]) == (list(data.byte_vocabulary().encode(DIALOGUE)), 0)

  source = models.ModelSource(config=models.tiny(num_layers=1), chat_format="chatml")
  summary = run_sft(str(tmp_path / "sft"), source, max_len=256, batch_size=8, num_steps=2, eval_split=None,
                    num_samples=1, sampling_config=sampling.SamplingConfig(4, 0.0),
                    fit=trainer.FitConfig(tensorboard=False))  # fmt: skip
  assert summary["steps"] == 2 and not summary["samples"][0]["prompt"].startswith("<|im_start|>")

  mesh = partitioning.make_mesh({"data": 1}, jax.devices()[:1])
  loaded = source.load(mesh)
  assert loaded.vocab.chat.name == "chatml"
  # The checkpoint records what it read; loading it as plain text is refused, naming both
  trained = source.replace(checkpoint=str(tmp_path / "sft" / "checkpoints"))
  assert trained.load(mesh).vocab.chat.name == "chatml"
  with pytest.raises(CheckpointError, match="chat_format: 'chatml' there, None here"):
    trained.replace(chat_format=None).load(mesh)
  gen = generation.Generator(
    loaded.model, loaded.vocab, sampling.SamplingConfig(3, 0.0), batch_size=1, max_prompt_len=256, mesh=mesh
  )
  shown = []
  sample = gen.sample_arrays

  def recording(params, tokens, mask, key):
    shown.append(vocab.decode([int(t) for t in np.asarray(tokens)[0][np.asarray(mask)[0]]]))
    return sample(params, tokens, mask, key)

  gen.sample_arrays = recording
  gen(loaded.params, [DIALOGUE], seed=0)
  assert shown == [chat.FORMATS["chatml"].prompt(DIALOGUE)]
