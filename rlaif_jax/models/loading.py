"""Real checkpoints: Gemma 3 text models from GGUF files and Hugging Face safetensors folders.

Both formats store each projection as a [out, in] matrix; ours are einsum kernels with the
head axes split out. GGUF (llama.cpp's converter) stores RMSNorm weights with the +1 of
Gemma's (1 + scale) already added; Hugging Face stores the raw scale, as we do. Everything is
read as float32 numpy (GGUF quantized tensors are dequantized with the `gguf` package) and
checked against the config's shapes before any array reaches a device; the tokenizer of a
GGUF file becomes a SentencePiece model that `seqio.SentencePieceVocabulary` reads.

Nothing is downloaded: paths come from the user (or from a package that ships the file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np

from rlaif_jax.checkpoints import CheckpointError  # one error for every unusable checkpoint
from rlaif_jax.models.config import AttentionType, TransformerConfig

# Per-layer tensors: our path under blocks_i -> (GGUF name under blk.i, HF name under model.layers.i).
LAYER_TENSORS = {
  ("attn", "q"): ("attn_q.weight", "self_attn.q_proj.weight"),
  ("attn", "k"): ("attn_k.weight", "self_attn.k_proj.weight"),
  ("attn", "v"): ("attn_v.weight", "self_attn.v_proj.weight"),
  ("attn", "o"): ("attn_output.weight", "self_attn.o_proj.weight"),
  ("attn", "query_norm", "scale"): ("attn_q_norm.weight", "self_attn.q_norm.weight"),
  ("attn", "key_norm", "scale"): ("attn_k_norm.weight", "self_attn.k_norm.weight"),
  ("mlp", "gate"): ("ffn_gate.weight", "mlp.gate_proj.weight"),
  ("mlp", "up"): ("ffn_up.weight", "mlp.up_proj.weight"),
  ("mlp", "down"): ("ffn_down.weight", "mlp.down_proj.weight"),
  ("pre_attn_norm", "scale"): ("attn_norm.weight", "input_layernorm.weight"),
  ("post_attn_norm", "scale"): ("post_attention_norm.weight", "post_attention_layernorm.weight"),
  ("pre_ffw_norm", "scale"): ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
  ("post_ffw_norm", "scale"): ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
}
TOP_TENSORS = {
  ("embedder", "embedding"): ("token_embd.weight", "model.embed_tokens.weight"),
  ("final_norm", "scale"): ("output_norm.weight", "model.norm.weight"),
}


def _kernel(path: tuple[str, ...], w: np.ndarray, cfg: TransformerConfig) -> np.ndarray:
  """A [out, in] matrix (or a vector) in our layout for `path`."""
  d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  name = path[-1]
  if name == "q":
    return w.T.reshape(d, n, h)
  if name in ("k", "v"):
    return w.T.reshape(d, k, h)
  if name == "o":
    return w.T.reshape(n, h, d)
  if name in ("gate", "up", "down"):
    return w.T
  return w


def _expected_shape(path: tuple[str, ...], cfg: TransformerConfig) -> tuple[int, ...]:
  """The [out, in] (file) shape each tensor must have under cfg."""
  d, f, n, k, h = cfg.embed_dim, cfg.hidden_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  return {
    "q": (n * h, d),
    "k": (k * h, d),
    "v": (k * h, d),
    "o": (d, n * h),
    "gate": (f, d),
    "up": (f, d),
    "down": (d, f),
    "embedding": (cfg.vocab_size, d),
  }.get(path[-1], (h,) if path[-2] in ("query_norm", "key_norm") else (d,))


def params_from_tensors(
  get: Callable[[str], np.ndarray], cfg: TransformerConfig, source: str, gguf: bool, where: str
) -> dict:
  """Our parameter tree from a name -> [out, in] float array reader.

  gguf selects GGUF names (and removes the +1 llama.cpp adds to norm weights); `where` names
  the file in errors.
  """
  col = 0 if gguf else 1
  params: dict = {}

  def put(path, file_name):
    try:
      w = np.asarray(get(file_name), np.float32)
    except KeyError:
      raise CheckpointError(f"{where}: tensor {file_name!r} is missing ({source})") from None
    want = _expected_shape(path, cfg)
    if tuple(w.shape) != want:
      raise CheckpointError(
        f"{where}: tensor {file_name!r} has shape {tuple(w.shape)} but the config "
        f"(embed_dim={cfg.embed_dim}, hidden_dim={cfg.hidden_dim}, heads={cfg.num_heads}/{cfg.num_kv_heads}, "
        f"head_dim={cfg.head_dim}, vocab_size={cfg.vocab_size}) needs {want}"
      )
    if gguf and path[-1] == "scale":
      w = w - 1.0
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.ascontiguousarray(_kernel(path, w, cfg))

  for path, names in TOP_TENSORS.items():
    put(path, names[col])
  for i in range(cfg.num_layers):
    for path, names in LAYER_TENSORS.items():
      put((f"blocks_{i}", *path), f"blk.{i}.{names[0]}" if gguf else f"model.layers.{i}.{names[1]}")
  return params


# ---------------------------------------------------------------- GGUF


def _gguf_reader(path: str):
  import gguf

  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file {path!r} does not exist")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # truncated or not a GGUF file: gguf raises ValueError/struct errors
    raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def _field(reader, key: str, path: str, default=None, required: bool = True):
  field = reader.fields.get(key)
  if field is None:
    if required and default is None:
      raise CheckpointError(f"{path}: metadata field {key!r} is missing")
    return default
  return field.contents()


def gguf_config(reader, path: str = "<gguf>", **overrides) -> TransformerConfig:
  """The TransformerConfig a Gemma 3 GGUF file describes."""
  arch = _field(reader, "general.architecture", path)
  if arch != "gemma3":
    raise CheckpointError(f"{path}: general.architecture is {arch!r}; only 'gemma3' is supported")
  a = arch + "."
  tokens = reader.fields.get("tokenizer.ggml.tokens")
  embed = int(_field(reader, a + "embedding_length", path))
  heads = int(_field(reader, a + "attention.head_count", path))
  head_dim = int(_field(reader, a + "attention.key_length", path))
  layers = int(_field(reader, a + "block_count", path))
  scaling = _field(reader, a + "rope.scaling.type", path, required=False)
  config = dict(
    vocab_size=len(tokens.data) if tokens is not None else int(_field(reader, a + "vocab_size", path)),
    embed_dim=embed,
    hidden_dim=int(_field(reader, a + "feed_forward_length", path)),
    num_layers=layers,
    num_heads=heads,
    num_kv_heads=int(_field(reader, a + "attention.head_count_kv", path)),
    head_dim=head_dim,
    attention_pattern=(AttentionType.LOCAL,) * 5 + (AttentionType.GLOBAL,),
    sliding_window=int(_field(reader, a + "attention.sliding_window", path)),
    rope_base_local=float(_field(reader, a + "rope.freq_base_swa", path, 10_000.0)),
    rope_base_global=float(_field(reader, a + "rope.freq_base", path, 1_000_000.0)),
    rope_scale_global=float(_field(reader, a + "rope.scaling.factor", path, 1.0)) if scaling == "linear" else 1.0,
    # llama.cpp's rule: the 27B model scales queries by (embed / heads)^-1/2, the others by head_dim^-1/2.
    query_pre_attn_scalar=float(embed // heads if layers == 62 else head_dim),
    final_logit_soft_cap=_field(reader, a + "final_logit_softcapping", path, required=False),
    attn_logits_soft_cap=_field(reader, a + "attn_logit_softcapping", path, required=False),
    norm_eps=float(_field(reader, a + "attention.layer_norm_rms_epsilon", path, 1e-6)),
    max_len=int(_field(reader, a + "context_length", path, 32_768)),
  )
  return TransformerConfig(**{**config, **overrides})


def load_gguf(path: str, **config_overrides) -> tuple[TransformerConfig, dict]:
  """(config, float32 numpy params) of a Gemma 3 GGUF file, every tensor dequantized."""
  from gguf.quants import dequantize

  reader = _gguf_reader(path)
  config = gguf_config(reader, path, **config_overrides)
  tensors = {t.name: t for t in reader.tensors}

  def get(name):
    t = tensors[name]
    try:
      return dequantize(t.data, t.tensor_type)
    except Exception as e:
      raise CheckpointError(f"{path}: tensor {name!r} ({t.tensor_type.name}) cannot be read: {e}") from None

  return config, params_from_tensors(get, config, "GGUF", True, path)


_PIECE_TYPES = {1: "NORMAL", 2: "UNKNOWN", 3: "CONTROL", 4: "USER_DEFINED", 5: "UNUSED", 6: "BYTE"}


def gguf_sentencepiece(path: str) -> bytes:
  """A serialized SentencePiece model from a GGUF file's tokenizer metadata: Gemma's pieces,
  scores and types, byte fallback, no normalization (newlines and runs of spaces survive)."""
  from sentencepiece import sentencepiece_model_pb2 as pb

  reader = _gguf_reader(path)
  kind = _field(reader, "tokenizer.ggml.model", path)
  if kind != "llama":
    raise CheckpointError(f"{path}: tokenizer.ggml.model is {kind!r}; only SentencePiece ('llama') is supported")
  tokens = _field(reader, "tokenizer.ggml.tokens", path)
  scores = _field(reader, "tokenizer.ggml.scores", path)
  types = _field(reader, "tokenizer.ggml.token_type", path)
  if not len(tokens) == len(scores) == len(types):
    raise CheckpointError(f"{path}: tokenizer.ggml tokens/scores/token_type differ in length")
  special = {
    int(_field(reader, f"tokenizer.ggml.{name}_token_id", path, default)): name
    for name, default in (("unknown", 3), ("bos", 2), ("eos", 1), ("padding", 0))
  }
  model = pb.ModelProto()
  for i, (piece, score, kind) in enumerate(zip(tokens, scores, types)):
    kind = _PIECE_TYPES.get(int(kind), "NORMAL")
    if kind == "USER_DEFINED":  # llama.cpp writes these pieces' "▁" as plain spaces
      piece = piece.replace(" ", "\u2581")
    if kind == "CONTROL" and i not in special:  # <start_of_turn>, <unusedN>: matched in text, as HF does
      kind = "USER_DEFINED"
    if special.get(i) == "unknown":
      kind = "UNKNOWN"
    entry = model.pieces.add()
    entry.piece, entry.score = piece, float(score)
    entry.type = getattr(pb.ModelProto.SentencePiece, kind)
  ids = {name: i for i, name in special.items()}
  spec = model.trainer_spec
  spec.model_type = pb.TrainerSpec.BPE
  spec.vocab_size = len(tokens)
  spec.byte_fallback = True
  spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = ids["unknown"], ids["bos"], ids["eos"], ids["padding"]
  spec.unk_piece, spec.bos_piece = tokens[spec.unk_id], tokens[spec.bos_id]
  spec.eos_piece, spec.pad_piece = tokens[spec.eos_id], tokens[spec.pad_id]
  norm = model.normalizer_spec
  norm.name = "identity"
  norm.add_dummy_prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", path, False, required=False))
  norm.remove_extra_whitespaces = False
  norm.escape_whitespaces = True
  return model.SerializeToString()


# ---------------------------------------------------------------- Hugging Face safetensors


def hf_config(directory: str, **overrides) -> TransformerConfig:
  """The TransformerConfig of a Hugging Face Gemma 3 text model folder (config.json)."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist (a Hugging Face model folder needs config.json)")
  with open(path, encoding="utf-8") as f:
    c = json.load(f)
  c = c.get("text_config", c)  # multimodal Gemma 3 folders nest the text model's config
  if c.get("model_type") not in ("gemma3_text", "gemma3"):
    raise CheckpointError(f"{path}: model_type {c.get('model_type')!r}; only Gemma 3 text models are supported")

  def need(key):
    if key not in c:
      raise CheckpointError(f"{path}: field {key!r} is missing")
    return c[key]

  pattern_every = int(c.get("sliding_window_pattern", 6))
  layer_types = c.get("layer_types")
  if layer_types:
    pattern = tuple(AttentionType.LOCAL if t == "sliding_attention" else AttentionType.GLOBAL for t in layer_types)
  else:
    pattern = (AttentionType.LOCAL,) * (pattern_every - 1) + (AttentionType.GLOBAL,)
  scaling = c.get("rope_scaling") or {}
  config = dict(
    vocab_size=int(need("vocab_size")),
    embed_dim=int(need("hidden_size")),
    hidden_dim=int(need("intermediate_size")),
    num_layers=int(need("num_hidden_layers")),
    num_heads=int(need("num_attention_heads")),
    num_kv_heads=int(need("num_key_value_heads")),
    head_dim=int(need("head_dim")),
    attention_pattern=pattern,
    sliding_window=int(need("sliding_window")),
    rope_base_local=float(c.get("rope_local_base_freq", 10_000.0)),
    rope_base_global=float(c.get("rope_theta", 1_000_000.0)),
    rope_scale_global=float(scaling.get("factor", 1.0)) if scaling.get("rope_type") == "linear" else 1.0,
    query_pre_attn_scalar=float(c.get("query_pre_attn_scalar") or need("head_dim")),
    final_logit_soft_cap=c.get("final_logit_softcapping"),
    attn_logits_soft_cap=c.get("attn_logit_softcapping"),
    norm_eps=float(c.get("rms_norm_eps", 1e-6)),
    max_len=int(c.get("max_position_embeddings", 32_768)),
  )
  return TransformerConfig(**{**config, **overrides})


def load_safetensors(directory: str, **config_overrides) -> tuple[TransformerConfig, dict]:
  """(config, float32 numpy params) of a Hugging Face Gemma 3 folder (model*.safetensors)."""
  from safetensors import SafetensorError, safe_open

  config = hf_config(directory, **config_overrides)
  files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"{directory}: no *.safetensors files")
  handles, owner = [], {}
  for name in files:
    try:
      h = safe_open(os.path.join(directory, name), framework="numpy")
    except (SafetensorError, OSError, ValueError) as e:
      raise CheckpointError(f"{os.path.join(directory, name)}: not a readable safetensors file ({e})") from None
    handles.append(h)
    for key in h.keys():
      owner[key.removeprefix("language_model.")] = (h, key)

  def get(name):
    h, key = owner[name]
    try:
      return h.get_tensor(key).astype(np.float32)
    except (SafetensorError, ValueError, TypeError) as e:
      raise CheckpointError(f"{directory}: tensor {name!r} cannot be read ({e})") from None

  return config, params_from_tensors(get, config, "safetensors", False, directory)
