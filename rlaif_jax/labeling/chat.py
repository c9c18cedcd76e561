"""Chat formats: how an instruction-tuned labeler, judge or scorer wants its prompt.

A labeling prompt is plain text whose last line is the answer's lead-in ("Preferred Summary=",
"Score (1-10)="). In a chat format the prompt becomes the user's turn and the lead-in opens the
model's turn, so the answer token is what the assistant says first:

  <|im_start|>user\\n{preamble, context, responses}<|im_end|>\\n<|im_start|>assistant\\n{lead-in}

Formats are named (`FORMATS`) or recognized by their markers in a checkpoint's own chat template
(a GGUF file's tokenizer.chat_template): `resolve("auto", vocab)`.
"""

from __future__ import annotations

import dataclasses

from rlaif_jax.labeling.prompts import PromptParts


@dataclasses.dataclass(frozen=True)
class ChatFormat:
  name: str
  user_start: str  # opens the user's turn (after BOS, where the vocabulary has one)
  assistant_start: str  # closes the user's turn and opens the model's

  def wrap(self, parts: PromptParts) -> PromptParts:
    """The prompt as the user's turn, its last line (the answer's lead-in) opening the model's."""
    body, newline, lead_in = parts.suffix.rpartition("\n")
    if not newline:  # the suffix is the lead-in alone
      body, lead_in = "", parts.suffix
    return PromptParts(self.user_start + parts.prefix, parts.context, body + self.assistant_start + lead_in)


FORMATS = {
  f.name: f
  for f in (
    ChatFormat("chatml", "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),  # SmolLM2, Qwen
    ChatFormat("gemma", "<start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n"),
    ChatFormat(
      "llama3",
      "<|start_header_id|>user<|end_header_id|>\n\n",
      "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
  )
}
_MARKERS = {"<|im_start|>": "chatml", "<start_of_turn>": "gemma", "<|start_header_id|>": "llama3"}


def resolve(chat_format: str | None, vocab=None, where: str = "chat_format") -> ChatFormat | None:
  """None or 'none': plain text; a name in FORMATS; 'auto': the format whose markers the
  vocabulary's chat template (vocab.chat_template) uses, None when it has none."""
  if chat_format in (None, "none"):
    return None
  if chat_format == "auto":
    template = getattr(vocab, "chat_template", None) or ""
    found = [name for marker, name in _MARKERS.items() if marker in template]
    return FORMATS[found[0]] if found else None
  if chat_format not in FORMATS:
    raise ValueError(f"{where}={chat_format!r}; one of None, 'auto', {', '.join(map(repr, FORMATS))}")
  return FORMATS[chat_format]
