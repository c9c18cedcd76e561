"""SentencePiece vocabularies that say whether their model reads every text after BOS.

Imported lazily: seqio brings TensorFlow.
"""

from __future__ import annotations

import seqio


class SentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """seqio's SentencePiece vocabulary with `add_bos`: the checkpoint's own setting (GGUF
  tokenizer.ggml.add_bos_token, Hugging Face add_bos_token), or when it is not known, whether
  the model has a BOS piece at all. data.encoder puts BOS first where it is True."""

  def __init__(self, sentencepiece_model_file: str, extra_ids: int = 0, add_bos: bool | None = None):
    super().__init__(sentencepiece_model_file, extra_ids=extra_ids)
    self._add_bos = add_bos

  @property
  def add_bos(self) -> bool:
    return self.bos_id >= 0 if self._add_bos is None else self._add_bos

  def __hash__(self) -> int:  # seqio's equality compares the model and _add_bos (its __getstate__)
    return hash((self.sp_model, self._add_bos))
