"""Vocabularies: seqio's byte vocabulary for tiny models, SentencePiece for real checkpoints.

Both are imported lazily because seqio brings TensorFlow.
"""

from __future__ import annotations

import os


def byte_vocabulary():
  """seqio.ByteVocabulary: pad 0, EOS 1, UNK 2, the 256 bytes at 3..258."""
  import seqio

  return seqio.ByteVocabulary()


def sentencepiece_vocabulary(model_path: str, extra_ids: int = 0):
  """seqio.SentencePieceVocabulary from a .model file the user gives (e.g. Gemma 3's)."""
  import seqio

  if not os.path.exists(model_path):
    raise FileNotFoundError(f"SentencePiece model {model_path!r} does not exist")
  return seqio.SentencePieceVocabulary(model_path, extra_ids=extra_ids)
