"""One encoder: (context, response) texts -> the token ids a model was trained to read.

Every path that shows a model a context encodes it here: SFT examples, the prompts sampled for
candidates, RL, OAIF, RRHF, DPO's sampled KL and evaluation, reward-model training and scoring,
DPO pairs (and the labeler's prompts take their BOS from `bos`). An encoded context is

  BOS (where the tokenizer adds one) + the text rendered in the model's chat format, if any

BOS is the checkpoint's own setting (GGUF `tokenizer.ggml.add_bos_token`, Hugging Face
`add_bos_token`): Gemma and Llama 3 read every text after it, SmolLM2 does not. A chat format
renders as the checkpoint's template does (data.chat: the default system turn it adds, the
turns, the model's turn opened). A response is its text and EOS; in a chat format, its text
stripped (as the template's turns are) and the end-of-turn token.

Cutting is decided once, in `fit`, and training and scoring share it: a context's head (BOS, the
system turn and the first user turn's opening) is never cut; a context too long loses tokens
from the left after its head, so its end (the cue, the opened model turn) survives; a response
is cut from the right, only as far as needed to leave the context `min_context` tokens after
its head. Each row is fitted on its own, so one (context, response) becomes the same row in a
reward model's training pair and when RL scores it.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

MIN_CONTEXT = 32  # tokens of context always kept after the head: the cue and some of what leads up to it
# What records and stage settings say they were encoded with. Version 2 puts BOS first on every
# policy path and fits each row on its own: generations, records and checkpoints of version 1 are
# not reused.
VERSION = 2


class Context(NamedTuple):
  ids: list[int]
  head: int  # the leading ids never cut: BOS, the chat format's system turn and user-turn opening


def bos(vocab) -> int | None:
  """The BOS id when the vocabulary's tokenizer starts every text with it (`add_bos`), else None."""
  base = getattr(vocab, "base", vocab)
  if not getattr(base, "add_bos", False):
    return None
  found = getattr(base, "bos_id", None)
  return None if found is None or found < 0 else int(found)


def context(vocab, text: str) -> Context:
  """A context's ids: BOS where the tokenizer adds it, then the text as a prompt in the
  vocabulary's chat format (its turns, the model's turn opened) or as it is."""
  first = bos(vocab)
  start = [] if first is None else [first]
  chat = getattr(vocab, "chat", None)
  if chat is None:
    return Context(start + list(vocab.encode(text)), len(start))
  ids = list(vocab.encode(chat.prompt(text)))  # in one piece, as the checkpoint's tokenizer reads it
  head = vocab.head_ids  # the head's own ids (data.ChatVocabulary); the prompt keeps those it shares
  shared = next((i for i, (a, b) in enumerate(zip(ids, head)) if a != b), min(len(ids), len(head)))
  return Context(start + ids, len(start) + shared)


def response(vocab, text: str) -> list[int]:
  """A response's ids: its text, then EOS; in a chat format the model's turn as its template
  renders it (the text stripped, as every turn is), then the end-of-turn token."""
  if getattr(vocab, "chat", None) is not None:
    text = text.strip()
  return list(vocab.encode(text)) + [vocab.eos_id]


def example(vocab, text: str, **responses: str | None) -> dict:
  """A converter's example (data.converters): the context's ids and head, and each named
  response's ids (a None response stays None)."""
  ctx = context(vocab, text)
  encoded = {k: None if r is None else response(vocab, r) for k, r in responses.items()}
  return {"inputs": ctx.ids, "head": ctx.head, **encoded}


def cut_context(ctx: Context, budget: int) -> tuple[list[int], bool]:
  """ctx's ids in at most budget tokens: the head kept, then the end of the rest; (ids, cut)."""
  ids, head = list(ctx.ids), ctx.head
  if len(ids) <= budget:
    return ids, False
  if budget <= head:
    raise ValueError(
      f"a length of {budget} tokens leaves no room for the context after its first {head} tokens (BOS and the "
      "chat format's system turn); raise max_len or max_prompt_len"
    )
  return ids[:head] + ids[len(ids) - (budget - head) :], True


def fit(ctx: Context, target: list[int], max_len: int, min_context: int = MIN_CONTEXT):
  """One row of at most max_len tokens: (context ids, response ids, context cut, response cut).
  The response keeps all it can while the context keeps its head and min_context tokens more."""
  target = list(target)
  reserve = min(len(ctx.ids), ctx.head + min_context, max_len - 1)
  cut_t = len(target) > max_len - reserve
  target = target[: max_len - reserve] if cut_t else target
  ids, cut_c = cut_context(ctx, max_len - len(target))
  return ids, target, cut_c, cut_t


def as_text(value) -> str:
  """A seqio string feature (bytes) or any value as str."""
  return value.decode() if isinstance(value, bytes) else str(value)


def sft_examples(examples: list[dict], vocab) -> list[dict]:
  """A seqio SFT task's examples encoded here from their texts (`inputs_pretokenized`,
  `targets_pretokenized`): inputs with BOS and chat rendering, `head`, targets ending in EOS."""
  return [
    {**ex, **example(vocab, as_text(ex["inputs_pretokenized"]), targets=as_text(ex["targets_pretokenized"]))}
    for ex in examples
  ]


def reading(vocab) -> dict:
  """What a model trained on this vocabulary's ids reads: its vocabulary (a digest), BOS and chat
  format. Checkpoints record it (checkpoints.READS_FILE), and loading one with another is refused."""
  base = getattr(vocab, "base", vocab)
  chat = getattr(vocab, "chat", None)
  return {
    "vocabulary": vocabulary_digest(base),
    "bos": bos(vocab),
    "chat_format": chat.identity if chat else None,
    "encoder": VERSION,
  }


def vocabulary_digest(vocab) -> str:
  """A short name and digest of a vocabulary's pieces: the same tokenizer gives the same digest."""
  name = type(vocab).__name__
  if hasattr(vocab, "sp_model") and vocab.sp_model is not None:  # seqio.SentencePieceVocabulary
    blob = vocab.sp_model
  elif hasattr(vocab, "digest_bytes"):  # data.bpe.BpeVocabulary
    blob = vocab.digest_bytes()
  else:  # seqio.ByteVocabulary and other fixed vocabularies: their size names them
    blob = repr((name, vocab.vocab_size)).encode()
  return f"{name}:{hashlib.sha256(blob).hexdigest()[:16]}"
