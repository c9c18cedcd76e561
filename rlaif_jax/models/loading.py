"""Real checkpoints: Gemma 3 text models and Llama-family models (Llama 2 and 3, SmolLM2, Qwen 2.5)
from GGUF files and Hugging Face safetensors folders.

Both formats store each projection as a [out, in] matrix; ours are einsum kernels with the
head axes split out. GGUF (llama.cpp's converter) stores Gemma's RMSNorm weights with the +1 of
(1 + scale) already added; Hugging Face stores the raw scale, as we do. llama.cpp's converter
also permutes the query and key rows of 'llama' models for its interleaved rotary layout; they
are permuted back here to the half-split layout our rotary embedding (and Hugging Face) use. Everything is
read as float32 numpy (GGUF quantized tensors are dequantized with the `gguf` package) and
checked against the config's shapes before any array reaches a device; the tokenizer of a
GGUF file becomes a SentencePiece model that `seqio.SentencePieceVocabulary` reads.

Nothing is downloaded: paths come from the user (or from a package that ships the file).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import numpy as np

from rlaif_jax.checkpoints import CheckpointError  # one error for every unusable checkpoint
from rlaif_jax.models.config import AttentionType, TransformerConfig
from rlaif_jax.models.config import llama as models_llama

# Per-layer tensors: our path under blocks_i -> (GGUF name under blk.i, HF name under model.layers.i).
LAYER_TENSORS = {
  ("attn", "q"): ("attn_q.weight", "self_attn.q_proj.weight"),
  ("attn", "k"): ("attn_k.weight", "self_attn.k_proj.weight"),
  ("attn", "v"): ("attn_v.weight", "self_attn.v_proj.weight"),
  ("attn", "o"): ("attn_output.weight", "self_attn.o_proj.weight"),
  ("attn", "q_bias"): ("attn_q.bias", "self_attn.q_proj.bias"),
  ("attn", "k_bias"): ("attn_k.bias", "self_attn.k_proj.bias"),
  ("attn", "v_bias"): ("attn_v.bias", "self_attn.v_proj.bias"),
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
  ("embedder", "unembedding"): ("output.weight", "lm_head.weight"),
  ("final_norm", "scale"): ("output_norm.weight", "model.norm.weight"),
}
# Hugging Face's Llama family calls its pre-MLP norm "post_attention_layernorm" (it has no norm after attention).
LLAMA_HF_NAMES = {("pre_ffw_norm", "scale"): "post_attention_layernorm.weight"}


def _present(path: tuple[str, ...], cfg: TransformerConfig) -> bool:
  """Whether the config has the tensor at path (Gemma's extra norms, Qwen's biases, an untied output)."""
  needs = {
    "query_norm": cfg.use_qk_norm,
    "key_norm": cfg.use_qk_norm,
    "post_attn_norm": cfg.use_post_attn_norm,
    "post_ffw_norm": cfg.use_post_ffw_norm,
    "q_bias": cfg.qkv_bias,
    "k_bias": cfg.qkv_bias,
    "v_bias": cfg.qkv_bias,
    "unembedding": not cfg.tie_embeddings,
  }
  return all(needs.get(key, True) for key in path)


def unpermute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's permutation of a 'llama' model's query or key rows [heads * H, ...]: each
  head's rows in interleaved pairs (x0, x1), (x2, x3), ... back to halves (x0, x2, ... | x1, x3, ...)."""
  return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


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
  if name == "q_bias":
    return w.reshape(n, h)
  if name in ("k_bias", "v_bias"):
    return w.reshape(k, h)
  return w


def _expected_shape(path: tuple[str, ...], cfg: TransformerConfig) -> tuple[int, ...]:
  """The [out, in] (file) shape each tensor must have under cfg."""
  d, f, n, k, h = cfg.embed_dim, cfg.hidden_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  return {
    "q": (n * h, d),
    "k": (k * h, d),
    "v": (k * h, d),
    "o": (d, n * h),
    "q_bias": (n * h,),
    "k_bias": (k * h,),
    "v_bias": (k * h,),
    "gate": (f, d),
    "up": (f, d),
    "down": (d, f),
    "embedding": (cfg.vocab_size, d),
    "unembedding": (cfg.vocab_size, d),
  }.get(path[-1], (h,) if path[-2] in ("query_norm", "key_norm") else (d,))


def params_from_tensors(
  get: Callable[[str], np.ndarray],
  cfg: TransformerConfig,
  source: str,
  gguf: bool,
  where: str,
  unpermute_qk: bool = False,
) -> dict:
  """Our parameter tree from a name -> [out, in] float array reader, for the tensors cfg has.

  gguf selects GGUF names (and removes the +1 llama.cpp adds to Gemma's norm weights);
  unpermute_qk undoes llama.cpp's rotary permutation of a 'llama' GGUF's query and key rows;
  `where` names the file in errors.
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
    if gguf and path[-1] == "scale" and cfg.norm_plus_one:
      w = w - 1.0
    if unpermute_qk and path[-1] in ("q", "k"):
      w = unpermute_rotary(w, cfg.num_heads if path[-1] == "q" else cfg.num_kv_heads)
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.ascontiguousarray(_kernel(path, w, cfg))

  hf_names = {} if cfg.norm_plus_one else LLAMA_HF_NAMES
  for path, names in TOP_TENSORS.items():
    if _present(path, cfg):
      put(path, names[col])
  for i in range(cfg.num_layers):
    for path, names in LAYER_TENSORS.items():
      if _present(path, cfg):
        put(
          (f"blocks_{i}", *path), f"blk.{i}.{names[0]}" if gguf else f"model.layers.{i}.{hf_names.get(path, names[1])}"
        )
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


LLAMA_ARCHITECTURES = ("llama", "qwen2")  # GGUF general.architecture values of the Llama family


def gguf_config(reader, path: str = "<gguf>", **overrides) -> TransformerConfig:
  """The TransformerConfig a Gemma 3 or Llama-family ('llama', 'qwen2') GGUF file describes."""
  arch = _field(reader, "general.architecture", path)
  if arch not in ("gemma3", *LLAMA_ARCHITECTURES):
    raise CheckpointError(
      f"{path}: general.architecture is {arch!r}; supported: 'gemma3', {', '.join(map(repr, LLAMA_ARCHITECTURES))}"
    )
  a = arch + "."
  tokens = reader.fields.get("tokenizer.ggml.tokens")
  embed = int(_field(reader, a + "embedding_length", path))
  heads = int(_field(reader, a + "attention.head_count", path))
  layers = int(_field(reader, a + "block_count", path))
  shapes = dict(
    vocab_size=len(tokens.data) if tokens is not None else int(_field(reader, a + "vocab_size", path)),
    embed_dim=embed,
    hidden_dim=int(_field(reader, a + "feed_forward_length", path)),
    num_layers=layers,
    num_heads=heads,
    num_kv_heads=int(_field(reader, a + "attention.head_count_kv", path, heads)),
    norm_eps=float(_field(reader, a + "attention.layer_norm_rms_epsilon", path, 1e-6)),
    max_len=int(_field(reader, a + "context_length", path, 32_768)),
  )
  scaling = _field(reader, a + "rope.scaling.type", path, required=False)
  linear = float(_field(reader, a + "rope.scaling.factor", path, 1.0)) if scaling == "linear" else 1.0
  if arch in LLAMA_ARCHITECTURES:
    head_dim = int(_field(reader, a + "rope.dimension_count", path, embed // heads))
    factors = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)  # Llama 3.1's scaling
    return models_llama(
      rope_freq_factors=None if factors is None else tuple(np.asarray(factors.data, np.float32).reshape(-1).tolist()),
      **shapes,
      head_dim=head_dim,
      rope_base_global=float(_field(reader, a + "rope.freq_base", path, 10_000.0)),
      rope_scale_global=linear,
      tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
      qkv_bias=any(t.name == "blk.0.attn_q.bias" for t in reader.tensors),
      **overrides,
    )
  head_dim = int(_field(reader, a + "attention.key_length", path))
  config = dict(
    shapes,
    head_dim=head_dim,
    attention_pattern=(AttentionType.LOCAL,) * 5 + (AttentionType.GLOBAL,),
    sliding_window=int(_field(reader, a + "attention.sliding_window", path)),
    rope_base_local=float(_field(reader, a + "rope.freq_base_swa", path, 10_000.0)),
    rope_base_global=float(_field(reader, a + "rope.freq_base", path, 1_000_000.0)),
    rope_scale_global=linear,
    # llama.cpp's rule: the 27B model scales queries by (embed / heads)^-1/2, the others by head_dim^-1/2.
    query_pre_attn_scalar=float(embed // heads if layers == 62 else head_dim),
    final_logit_soft_cap=_field(reader, a + "final_logit_softcapping", path, required=False),
    attn_logits_soft_cap=_field(reader, a + "attn_logit_softcapping", path, required=False),
  )
  return TransformerConfig(**{**config, **overrides})


def load_gguf(path: str, **config_overrides) -> tuple[TransformerConfig, dict]:
  """(config, float32 numpy params) of a Gemma 3 or Llama-family GGUF file, every tensor dequantized."""
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

  unpermute = _field(reader, "general.architecture", path) == "llama"
  return config, params_from_tensors(get, config, "GGUF", True, path, unpermute_qk=unpermute)


_PIECE_TYPES = {1: "NORMAL", 2: "UNKNOWN", 3: "CONTROL", 4: "USER_DEFINED", 5: "UNUSED", 6: "BYTE"}


@dataclasses.dataclass(frozen=True)
class SentencePieceModel:
  """A SentencePiece tokenizer and whether its model reads every text after BOS."""

  model: bytes | str  # the serialized model, or a tokenizer.model path
  add_bos: bool | None  # None: not said (then a model with a BOS piece reads it: data.vocab)


def hf_add_bos(directory: str) -> bool | None:
  """tokenizer_config.json's add_bos_token in a Hugging Face folder (None when it does not say)."""
  path = os.path.join(directory, "tokenizer_config.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    value = json.load(f).get("add_bos_token")
  return None if value is None else bool(value)


def gguf_tokenizer(path: str):
  """A GGUF file's tokenizer: a SentencePieceModel (tokenizer.ggml.model 'llama', Gemma's; BOS
  as tokenizer.ggml.add_bos_token says), or for byte-level BPE ('gpt2': SmolLM2, Llama 3, Qwen)
  a (tokenizers.Tokenizer, specials) pair, specials the ids, add_bos and chat template of
  data.bpe's special_tokens.json."""
  reader = _gguf_reader(path)
  kind = _field(reader, "tokenizer.ggml.model", path)
  if kind == "llama":
    add_bos = _field(reader, "tokenizer.ggml.add_bos_token", path, None, required=False)
    try:  # metadata the model cannot be built from fails here, named, rather than deep in a stage
      model = gguf_sentencepiece(path)
    except CheckpointError:
      raise
    except Exception as e:
      raise CheckpointError(f"{path}: its SentencePiece tokenizer cannot be loaded ({type(e).__name__}: {e})") from None
    return SentencePieceModel(model, None if add_bos is None else bool(add_bos))
  if kind != "gpt2":
    raise CheckpointError(f"{path}: tokenizer.ggml.model is {kind!r}; supported: 'llama' (SentencePiece), 'gpt2' (BPE)")
  from rlaif_jax.data import bpe

  tokens = _field(reader, "tokenizer.ggml.tokens", path)
  pre = _field(reader, "tokenizer.ggml.pre", path, "gpt-2", required=False)
  merges, types = _field(reader, "tokenizer.ggml.merges", path), _field(reader, "tokenizer.ggml.token_type", path)
  try:
    tokenizer = bpe.from_gguf_fields(tokens, merges, types, pre, path)
  except CheckpointError:
    raise
  except Exception as e:  # the tokenizers library's own errors (a merge naming no token, ...)
    raise CheckpointError(f"{path}: its BPE tokenizer cannot be loaded ({type(e).__name__}: {e})") from None
  ids = {k: _field(reader, f"tokenizer.ggml.{k}_token_id", path, required=False) for k in ("eos", "padding", "bos")}
  if ids["eos"] is None:
    raise CheckpointError(f"{path}: metadata field 'tokenizer.ggml.eos_token_id' is missing")
  specials = {
    "eos_id": int(ids["eos"]),
    "pad_id": int(ids["padding"] if ids["padding"] is not None else ids["eos"]),
    "unk_id": _field(reader, "tokenizer.ggml.unknown_token_id", path, required=False),
    "bos_id": ids["bos"],
    "add_bos": bool(_field(reader, "tokenizer.ggml.add_bos_token", path, False, required=False)),
    "chat_template": _field(reader, "tokenizer.chat_template", path, required=False),
  }
  return tokenizer, specials


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
  """The TransformerConfig of a Hugging Face Gemma 3 text model folder or a Llama-family one
  (model_type llama, qwen2, mistral without a sliding window) from its config.json."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist (a Hugging Face model folder needs config.json)")
  with open(path, encoding="utf-8") as f:
    c = json.load(f)
  c = c.get("text_config", c)  # multimodal Gemma 3 folders nest the text model's config

  def need(key):
    if key not in c:
      raise CheckpointError(f"{path}: field {key!r} is missing")
    return c[key]

  if c.get("model_type") in HF_LLAMA_TYPES:
    return _hf_llama_config(c, need, path, overrides)
  if c.get("model_type") not in ("gemma3_text", "gemma3"):
    known = ", ".join(repr(t) for t in ("gemma3_text", "gemma3", *HF_LLAMA_TYPES))
    raise CheckpointError(f"{path}: model_type {c.get('model_type')!r}; supported: {known}")
  pattern_every = int(c.get("sliding_window_pattern", 6))
  layer_types = c.get("layer_types")
  if layer_types:
    pattern = tuple(AttentionType.LOCAL if t == "sliding_attention" else AttentionType.GLOBAL for t in layer_types)
  else:
    pattern = (AttentionType.LOCAL,) * (pattern_every - 1) + (AttentionType.GLOBAL,)
  # transformers 4 writes rope_theta, rope_local_base_freq and rope_scaling; 5 writes rope_parameters per layer type
  by_type = c.get("rope_parameters") or {}
  full, sliding = by_type.get("full_attention") or {}, by_type.get("sliding_attention") or {}
  scaling = c.get("rope_scaling") or full
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
    rope_base_local=float(c.get("rope_local_base_freq") or sliding.get("rope_theta") or 10_000.0),
    rope_base_global=float(c.get("rope_theta") or full.get("rope_theta") or 1_000_000.0),
    rope_scale_global=float(scaling.get("factor", 1.0)) if scaling.get("rope_type") == "linear" else 1.0,
    query_pre_attn_scalar=float(c.get("query_pre_attn_scalar") or need("head_dim")),
    final_logit_soft_cap=c.get("final_logit_softcapping"),
    attn_logits_soft_cap=c.get("attn_logit_softcapping"),
    norm_eps=float(c.get("rms_norm_eps", 1e-6)),
    max_len=int(c.get("max_position_embeddings", 32_768)),
  )
  return TransformerConfig(**{**config, **overrides})


HF_LLAMA_TYPES = ("llama", "qwen2", "mistral")


def _hf_llama_config(c: dict, need, path: str, overrides: dict) -> TransformerConfig:
  """A Llama-family config.json: RoPE linear or 'llama3' scaling, q/k/v biases for Qwen 2
  (Llama's attention_bias, which also biases the output projection, and MLP biases are refused)."""
  if c.get("attention_bias") or c.get("mlp_bias"):
    raise CheckpointError(f"{path}: attention_bias / mlp_bias (biases on every projection) are not supported")
  if c.get("use_sliding_window") or (c.get("model_type") == "mistral" and c.get("sliding_window")):
    raise CheckpointError(f"{path}: sliding-window attention in a Llama-family model is not supported")
  scaling = c.get("rope_scaling") or c.get("rope_parameters") or {}  # transformers 5 writes rope_parameters
  kind = scaling.get("rope_type", scaling.get("type"))
  if kind not in (None, "default", "linear", "llama3"):
    raise CheckpointError(f"{path}: rope_scaling type {kind!r} is not supported (linear, llama3 are)")
  llama3 = None
  if kind == "llama3":
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    llama3 = tuple(float(scaling[k]) for k in keys)
  heads, embed = int(need("num_attention_heads")), int(need("hidden_size"))
  return models_llama(
    **{
      "vocab_size": int(need("vocab_size")),
      "embed_dim": embed,
      "hidden_dim": int(need("intermediate_size")),
      "num_layers": int(need("num_hidden_layers")),
      "num_heads": heads,
      "num_kv_heads": int(c.get("num_key_value_heads") or heads),
      "head_dim": int(c.get("head_dim") or embed // heads),
      "rope_base_global": float(c.get("rope_theta") or scaling.get("rope_theta") or 10_000.0),
      "rope_scale_global": float(scaling.get("factor", 1.0)) if kind == "linear" else 1.0,
      "rope_llama3": llama3,
      "tie_embeddings": bool(c.get("tie_word_embeddings", False)),  # the Llama-family configs' default
      "qkv_bias": c.get("model_type") == "qwen2",
      "norm_eps": float(c.get("rms_norm_eps", 1e-6)),
      "max_len": int(c.get("max_position_embeddings", 32_768)),
      **overrides,
    }
  )


def hf_tokenizer(directory: str):
  """A Hugging Face folder's tokenizer.json as gguf_tokenizer's (tokenizers.Tokenizer, specials)
  pair: the special ids from tokenizer_config.json's token strings (eos, pad, bos; add_bos_token)
  or config.json's ids, and its chat template."""
  from tokenizers import Tokenizer

  tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
  settings, model_config = {}, {}
  for name, target in (("tokenizer_config.json", settings), ("config.json", model_config)):
    if os.path.exists(os.path.join(directory, name)):
      with open(os.path.join(directory, name), encoding="utf-8") as f:
        target.update(json.load(f))
  model_config = model_config.get("text_config", model_config)

  def special(name):
    token = settings.get(f"{name}_token")
    token = token.get("content") if isinstance(token, dict) else token
    found = tokenizer.token_to_id(token) if token else None
    return found if found is not None else model_config.get(f"{name}_token_id")

  eos = special("eos")
  if isinstance(eos, list):
    eos = eos[0]
  if eos is None:
    raise CheckpointError(
      f"{directory}: no EOS token in tokenizer_config.json (eos_token) or config.json (eos_token_id)"
    )
  pad = special("pad")
  specials = {
    "eos_id": int(eos),
    "pad_id": int(eos if pad is None else pad),
    "unk_id": special("unk"),
    "bos_id": special("bos"),
    "add_bos": bool(settings.get("add_bos_token", False)),
    "chat_template": settings.get("chat_template"),
  }
  return tokenizer, specials


def load_safetensors(directory: str, **config_overrides) -> tuple[TransformerConfig, dict]:
  """(config, float32 numpy params) of a Hugging Face Gemma 3 or Llama-family folder (*.safetensors)."""
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
