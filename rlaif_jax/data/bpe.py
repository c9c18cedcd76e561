"""Byte-level BPE vocabularies (SmolLM2, Llama 3, Qwen 2.5) as seqio vocabularies.

A converted model folder keeps such a tokenizer as `tokenizer.json` (the Hugging Face
`tokenizers` format) and `special_tokens.json` ({eos_id, pad_id, unk_id, bos_id, add_bos,
chat_template}); `BpeVocabulary` encodes and decodes with the `tokenizers` package on the host,
and inside seqio's TensorFlow pipelines through `tf.py_function`. `from_gguf_fields` builds the
tokenizer from a GGUF file's `tokenizer.ggml` metadata (tokens, merges, token types and the
pre-tokenizer name), as llama.cpp tokenizes.

Imported lazily: seqio brings TensorFlow, and `tokenizers` is an optional extra.
"""

from __future__ import annotations

import json
import os

import numpy as np
import seqio
import tensorflow as tf

TOKENIZER_JSON, SPECIAL_FILE = "tokenizer.json", "special_tokens.json"
# The split before byte-level BPE of Llama 3 (numbers in runs of up to three digits) and of Qwen 2
# (digits one by one): words with their leading space or punctuation, English contractions,
# punctuation runs, newlines and other whitespace.
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
SPLITS = {"llama-bpe": _WORDS + r"\p{N}{1,3}" + _REST, "qwen2": _WORDS + r"\p{N}" + _REST}
# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) this module reproduces
PRE_TOKENIZERS = ("smollm", "gpt-2", *SPLITS)


def _pre_tokenizer(name: str):
  from tokenizers import Regex, pre_tokenizers

  if name in SPLITS:  # the split, then the byte mapping alone
    split = pre_tokenizers.Split(Regex(SPLITS[name]), behavior="isolated", invert=False)
    return pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if name == "smollm":  # digits one by one, then GPT-2's split and byte mapping
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
  return byte_level


def from_gguf_fields(tokens, merges, types, pre: str, where: str):
  """A tokenizers.Tokenizer from a GGUF file's byte-level BPE metadata: tokens (id order),
  merges ("a b" strings), token types (3 = control, 4 = user defined: matched whole in text)."""
  from tokenizers import AddedToken, Tokenizer, decoders, models

  if pre not in PRE_TOKENIZERS:
    raise ValueError(f"{where}: tokenizer.ggml.pre {pre!r} is not supported yet; supported: {PRE_TOKENIZERS}")
  vocab = {token: i for i, token in enumerate(tokens)}
  pairs = [tuple(m.split(" ", 1)) for m in merges]
  tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
  tokenizer.pre_tokenizer = _pre_tokenizer(pre)
  if pre == "qwen2":  # Qwen's tokenizer composes Unicode (NFC) first
    from tokenizers import normalizers

    tokenizer.normalizer = normalizers.NFC()
  tokenizer.decoder = decoders.ByteLevel()
  special = [AddedToken(t, special=int(k) == 3, normalized=False) for t, k in zip(tokens, types) if int(k) in (3, 4)]
  tokenizer.add_tokens(special)
  return tokenizer


def save(tokenizer, specials: dict, directory: str) -> None:
  """Writes tokenizer.json and special_tokens.json into directory."""
  tokenizer.save(os.path.join(directory, TOKENIZER_JSON))
  with open(os.path.join(directory, SPECIAL_FILE), "w", encoding="utf-8") as f:
    json.dump(specials, f, indent=1)


def is_bpe_folder(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, TOKENIZER_JSON)) and os.path.exists(
    os.path.join(directory, SPECIAL_FILE)
  )


class BpeVocabulary(seqio.Vocabulary):
  """A byte-level BPE tokenizer (tokenizer.json) with its special ids, as a seqio vocabulary.
  decode() stops at EOS (seqio's rule) and drops EOS, padding and (when the tokenizer adds it)
  BOS, as SentencePiece drops its control pieces; other special tokens (<|im_start|>) decode as
  their text."""

  def __init__(self, directory: str):
    from tokenizers import Tokenizer

    super().__init__(extra_ids=0)
    self.directory = directory
    self._tokenizer = Tokenizer.from_file(os.path.join(directory, TOKENIZER_JSON))
    with open(os.path.join(directory, SPECIAL_FILE), encoding="utf-8") as f:
      self.specials = json.load(f)
    dropped = ("eos_id", "pad_id", "bos_id") if self.specials.get("add_bos") else ("eos_id", "pad_id")
    self._dropped = {self.specials[k] for k in dropped if self.specials.get(k) is not None}

  @property
  def eos_id(self) -> int:
    return self.specials["eos_id"]

  @property
  def pad_id(self) -> int:
    return self.specials["pad_id"]

  @property
  def unk_id(self) -> int | None:
    return self.specials.get("unk_id")

  @property
  def bos_id(self) -> int | None:
    """The BOS id when the tokenizer starts every text with it (add_bos), else None."""
    return self.specials.get("bos_id") if self.specials.get("add_bos") else None

  @property
  def chat_template(self) -> str | None:
    return self.specials.get("chat_template")

  @property
  def _base_vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> list[int]:
    return self._tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids) -> str:
    return self._tokenizer.decode([int(i) for i in ids if int(i) not in self._dropped], skip_special_tokens=False)

  def _encode_tf(self, s):
    ids = tf.py_function(lambda x: np.asarray(self._encode(x.numpy().decode("utf-8")), np.int32), [s], tf.int32)
    ids.set_shape([None])
    return ids

  def _decode_tf(self, ids):
    text = tf.py_function(lambda x: self._decode(x.numpy().tolist()), [ids], tf.string)
    text.set_shape([])
    return text

  def digest_bytes(self) -> bytes:
    """What names this tokenizer: its tokenizer.json and special ids (data.encoder.reading)."""
    with open(os.path.join(self.directory, TOKENIZER_JSON), "rb") as f:
      return f.read() + json.dumps(self.specials, sort_keys=True).encode()

  def __eq__(self, other) -> bool:
    return isinstance(other, BpeVocabulary) and os.path.realpath(other.directory) == os.path.realpath(self.directory)

  def __hash__(self) -> int:
    return hash(os.path.realpath(self.directory))
