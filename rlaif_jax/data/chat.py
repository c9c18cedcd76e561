"""Chat formats: how an instruction-tuned model wants its prompts, as a policy or as a labeler.

A policy's prompt becomes the user's turn (an hh-rlhf dialogue, "\\n\\nHuman: ...\\n\\nAssistant:",
becomes its turns) after the default system turn the checkpoint's template adds (SmolLM2's, Qwen's),
and the model's turn is opened for the response, which ends with the format's end-of-turn token:

  <|im_start|>system\\n{default}<|im_end|>\\n<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n{response}<|im_end|>

A policy whose `ModelSource.chat_format` names a format gets a `ChatVocabulary`: the model's own
vocabulary whose `eos_id` is the end-of-turn token (so SFT targets end with it and sampling stops
at it); data.encoder renders every prompt in the format. Formats are named (`FORMATS`) or
recognized by their markers in a checkpoint's own chat template: `resolve("auto", vocab)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclasses.dataclass(frozen=True)
class ChatFormat:
  name: str
  user: str  # opens the user's turn (after BOS, where the vocabulary has one)
  assistant: str  # opens the model's turn
  end: str  # closes a turn; its first token (stripped) is the end-of-turn token
  system: str | None = None  # the system turn's text a checkpoint's template adds when a chat has none

  @property
  def system_turn(self) -> str:
    """The default system turn, or "" where the template adds none."""
    return self.turn("system", self.system) if self.system is not None else ""

  @property
  def head(self) -> str:
    """What every prompt starts with: the default system turn, then the user's turn opened."""
    return self.system_turn + self.user

  @property
  def identity(self) -> str:
    """The name, with a digest of the default system turn where there is one: what records keep."""
    if self.system is None:
      return self.name
    return f"{self.name}+system:{hashlib.sha256(self.system.encode()).hexdigest()[:8]}"

  @property
  def end_of_turn(self) -> str:
    return self.end.strip()

  def turn(self, role: str, text: str) -> str:
    opening = {"user": self.user, "assistant": self.assistant}.get(role) or self.user.replace("user", role, 1)
    return opening + text + self.end

  def prompt(self, text: str) -> str:
    """A policy prompt in the format, ending where the model's reply begins. An hh-rlhf dialogue
    ("\\n\\nHuman: q\\n\\nAssistant: a ... \\n\\nAssistant:") becomes its turns; any other text
    (a TL;DR prompt, a user's own) is the user's one turn."""
    pieces = _TURN.split(text)
    if len(pieces) >= 3 and not pieces[0].strip() and pieces[-2] == "Assistant" and not pieces[-1].strip():
      roles, texts = pieces[1:-2:2], pieces[2:-2:2]
      body = "".join(self.turn("user" if r == "Human" else "assistant", t.strip()) for r, t in zip(roles, texts))
    else:
      body = self.turn("user", text)
    return self.system_turn + body + self.assistant

  def wrap(self, parts):
    """A labeling prompt (labeling.PromptParts) as the user's turn (after the default system
    turn, as a policy's prompt), its last line (the answer's lead-in: "Preferred Summary=",
    "Score (1-10)=") opening the model's, so the answer token is what the assistant says first."""
    body, newline, lead_in = parts.suffix.rpartition("\n")
    if not newline:  # the suffix is the lead-in alone
      body, lead_in = "", parts.suffix
    return parts._replace(prefix=self.head + parts.prefix, suffix=body + self.end + self.assistant + lead_in)


FORMATS = {
  f.name: f
  for f in (
    ChatFormat("chatml", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n"),  # SmolLM2, Qwen
    ChatFormat("gemma", "<start_of_turn>user\n", "<start_of_turn>model\n", "<end_of_turn>\n"),
    ChatFormat(
      "llama3",
      "<|start_header_id|>user<|end_header_id|>\n\n",
      "<|start_header_id|>assistant<|end_header_id|>\n\n",
      "<|eot_id|>",
    ),
  )
}
_MARKERS = {"<|im_start|>": "chatml", "<start_of_turn>": "gemma", "<|start_header_id|>": "llama3"}
# A ChatML template's default system turn: a literal string (no Jinja inside) after the system opening
_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\n|\\n)([^'\"{}<]*)<\|im_end\|>")


def default_system(chat: ChatFormat, template: str | None) -> str | None:
  """The system turn a checkpoint's template adds to a chat that has none (SmolLM2's "You are a
  helpful AI assistant named SmolLM, ..."), for ChatML templates; None when it adds none."""
  found = _DEFAULT_SYSTEM.search(template or "") if chat.name == "chatml" else None
  return found[1].replace("\\n", "\n") if found else None


def resolve(chat_format: str | None, vocab=None, where: str = "chat_format") -> ChatFormat | None:
  """None or 'none': plain text; a name in FORMATS; 'auto': the format whose markers the
  vocabulary's chat template (vocab.chat_template) uses, None when it has none."""
  if chat_format in (None, "none"):
    return None
  template = getattr(vocab, "chat_template", None) or ""
  if chat_format == "auto":
    found = [name for marker, name in _MARKERS.items() if marker in template]
    if not found:
      return None
    chat_format = found[0]
  if chat_format not in FORMATS:
    raise ValueError(f"{where}={chat_format!r}; one of None, 'auto', {', '.join(map(repr, FORMATS))}")
  chat = FORMATS[chat_format]
  return dataclasses.replace(chat, system=default_system(chat, template))


class ChatVocabulary:
  """A vocabulary (seqio-like) for a model that speaks a chat format: encode/decode are the
  model's own; eos_id is the end-of-turn token where the vocabulary has it as one token (else
  the model's EOS), so responses end, and sampling stops, where the model's turn ends."""

  def __init__(self, base, chat: ChatFormat):
    self.base, self.chat = base, chat
    ids = list(base.encode(chat.end_of_turn))
    self.eos_id = ids[0] if len(ids) == 1 else base.eos_id
    self.head_ids = list(base.encode(chat.head))  # what data.encoder never cuts of a prompt

  def __getattr__(self, name):  # only for what the instance lacks: the base vocabulary's attributes
    if name == "base":  # not set yet (a copy being built): no recursion
      raise AttributeError(name)
    return getattr(self.base, name)

  def __eq__(self, other) -> bool:
    return isinstance(other, ChatVocabulary) and (self.base, self.chat) == (other.base, other.chat)

  def __hash__(self) -> int:
    return hash((self.base, self.chat))


def with_chat(vocab, chat_format: str | None, where: str = "chat_format"):
  """vocab as a ChatVocabulary in chat_format (resolved against vocab), or vocab itself for plain text."""
  chat = resolve(chat_format, vocab, where)
  return ChatVocabulary(getattr(vocab, "base", vocab), chat) if chat else vocab
