"""Vocabularies: seqio's byte vocabulary for tiny models, SentencePiece for real checkpoints.

Both are imported lazily because seqio brings TensorFlow.
"""

from __future__ import annotations

import os


def byte_vocabulary():
  """seqio.ByteVocabulary: pad 0, EOS 1, UNK 2, the 256 bytes at 3..258."""
  import seqio

  return seqio.ByteVocabulary()


def sentencepiece_vocabulary(model_path: str, extra_ids: int = 0, add_bos: bool | None = None):
  """A seqio.SentencePieceVocabulary from a .model file the user gives (e.g. Gemma 3's) that knows
  whether its model reads every text after BOS (`add_bos`, the checkpoint's setting; None: when
  the model has a BOS piece, as Gemma's and Llama 2's have)."""
  from rlaif_jax.data.spm import SentencePieceVocabulary

  if not os.path.exists(model_path):
    raise FileNotFoundError(f"SentencePiece model {model_path!r} does not exist")
  return SentencePieceVocabulary(model_path, extra_ids=extra_ids, add_bos=add_bos)
