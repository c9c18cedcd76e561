"""Vocabularies. Tiny models use seqio's byte vocabulary (pad 0, EOS 1, bytes at 3..258)."""

from __future__ import annotations


def byte_vocabulary():
  """seqio.ByteVocabulary; imported lazily because seqio brings TensorFlow."""
  import seqio

  return seqio.ByteVocabulary()
