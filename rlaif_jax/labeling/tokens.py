"""The token ids of the answers a labeler scores ("1", "2", or "1".."10").

An answer is spelled the way the tokenizer writes it right after the prompt's ending (e.g.
"Preferred Summary=" then "1"): the ids are those that encoding ending + answer adds to
encoding the ending alone, which handles tokenizers with a leading-space piece ("▁1").
When every answer is one token, the labeler reads their logits from the last position;
otherwise it scores each answer by its full sequence log-probability, and for answers that are
numbers (the direct 1-10 score) also by the probability that the number ends there:
`continuation_mask` marks the tokens that would extend it (a digit with no space before it).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

PAIR_ANSWERS = ("1", "2")
SCORE_ANSWERS = tuple(str(i) for i in range(1, 11))


@dataclasses.dataclass(frozen=True)
class Answers:
  strings: tuple[str, ...]
  ids: tuple[tuple[int, ...], ...]  # token ids of each answer

  @property
  def single_token(self) -> bool:
    return all(len(i) == 1 for i in self.ids)


def answer_ids(vocab, answer: str, ending: str) -> tuple[int, ...]:
  """Token ids of `answer` as it follows `ending`."""
  base = list(vocab.encode(ending))
  full = list(vocab.encode(ending + answer))
  if full[: len(base)] == base and len(full) > len(base):
    return tuple(full[len(base) :])
  return tuple(vocab.encode(answer))  # the ending's last piece merged with the answer


def resolve_answers(vocab, answers, ending: str, model_vocab_size: int) -> Answers:
  """Ids of each answer; fails clearly when the tokenizer cannot spell one."""
  ids = []
  unk = getattr(vocab, "unk_id", None)
  for a in answers:
    seq = answer_ids(vocab, a, ending)
    if not seq:
      raise ValueError(f"the labeler's tokenizer cannot spell the answer {a!r}: it encodes to no tokens")
    if unk is not None and unk in seq:
      raise ValueError(f"the labeler's tokenizer cannot spell the answer {a!r}: it encodes to the unknown token")
    if vocab.decode(list(seq)).strip() != a:
      raise ValueError(f"the labeler's tokenizer spells the answer {a!r} as {vocab.decode(list(seq))!r}")
    if max(seq) >= model_vocab_size:
      raise ValueError(f"answer {a!r} has token ids {seq} beyond the model's vocab_size={model_vocab_size}")
    ids.append(seq)
  if len(set(ids)) != len(ids):
    raise ValueError(f"the labeler's tokenizer gives two answers the same tokens: {dict(zip(answers, ids))}")
  return Answers(tuple(answers), tuple(ids))


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def continuation_mask(vocab, model_vocab_size: int) -> np.ndarray:
  """[model_vocab_size] bool: the tokens that continue a number when they come right after a
  digit, i.e. whose text starts with an ASCII digit (no space or word-boundary mark first).

  SentencePiece pieces are read as written ("▁5" starts with a space; "<0x35>" is the byte
  "5"); other vocabularies (bytes) by decoding each id alone.
  """
  mask = np.zeros(model_vocab_size, bool)
  sp = getattr(vocab, "tokenizer", None)
  if sp is not None and hasattr(sp, "id_to_piece"):
    for i in range(min(sp.get_piece_size(), model_vocab_size)):
      piece = sp.id_to_piece(i)
      byte = _BYTE_PIECE.match(piece)
      first = chr(int(byte.group(1), 16)) if byte else piece[:1]
      mask[i] = "0" <= first <= "9"
    return mask
  for i in range(min(vocab.vocab_size, model_vocab_size)):
    try:
      text = vocab.decode([i])
    except Exception:  # ids a vocabulary cannot decode alone (specials) continue nothing
      continue
    mask[i] = bool(text) and "0" <= text[0] <= "9"
  return mask
