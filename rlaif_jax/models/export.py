"""Hugging Face folders out: a model's parameters, tokenizer and facts as transformers reads them.

The inverse of `loading`: each of our einsum kernels becomes the [out, in] matrix transformers
stores under the same name the loader reads (LAYER_TENSORS, TOP_TENSORS), so a folder written
here and read back with `pretrained.load` gives the same parameters. The family is the one
transformers implements our switches with:

  Gemma 3 (1 + scale norms, QK-norm, GeGLU)  -> gemma3_text, Gemma3ForCausalLM
  Llama family without biases               -> llama, LlamaForCausalLM
  Llama family with q/k/v biases (Qwen 2.5)  -> qwen2, Qwen2ForCausalLM

and a reward model (scalar head) is that family's *ForSequenceClassification with one label:
its `score` layer is our score_kernel. transformers' score layer has no bias, so our head's
bias goes into `reward_stats.json` beside the weights (reward = score + score_bias).

Weights are written as safetensors one tensor at a time (`write_safetensors` lays out the file
header from the shapes first), in shards of at most `max_shard_bytes` with transformers' index
file above that; in a multi-host job every process gathers each tensor in turn and process 0
writes, so no host holds more than one whole tensor beyond its own shards.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable

import ml_dtypes
import numpy as np

from rlaif_jax.models.config import AttentionType, TransformerConfig
from rlaif_jax.models.loading import LAYER_TENSORS, LLAMA_HF_NAMES, TOP_TENSORS, _expected_shape, _present

DTYPES = {"bfloat16": ("BF16", ml_dtypes.bfloat16), "float32": ("F32", np.float32), "float16": ("F16", np.float16)}
SHARD_BYTES = 5 * 1024**3  # transformers' default largest shard
WEIGHTS_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
# family -> (causal LM class, sequence classification class)
CLASSES = {
  "gemma3_text": ("Gemma3ForCausalLM", "Gemma3TextForSequenceClassification"),
  "llama": ("LlamaForCausalLM", "LlamaForSequenceClassification"),
  "qwen2": ("Qwen2ForCausalLM", "Qwen2ForSequenceClassification"),
}


def family(config: TransformerConfig) -> str:
  """The transformers model_type that computes what config computes; a ValueError naming the
  switch that no transformers class has in that combination."""
  gemma = config.norm_plus_one
  want = {  # field -> what the family needs
    "use_qk_norm": gemma,
    "use_post_attn_norm": gemma,
    "use_post_ffw_norm": gemma,
    "scale_embeddings": gemma,
    "activation": "gelu_tanh" if gemma else "silu",
  }
  if gemma:
    want |= {"qkv_bias": False, "rope_llama3": None, "rope_freq_factors": None}
  else:  # transformers' Llama and Qwen 2 scale queries by head_dim ** -0.5 and cap nothing
    want |= {"attn_logits_soft_cap": None, "final_logit_soft_cap": None, "rope_freq_factors": None}
  wrong = [f"{k}={getattr(config, k)!r}" for k, v in want.items() if getattr(config, k) != v]
  if not gemma and config.query_pre_attn_scalar not in (None, config.head_dim):
    wrong.append(f"query_pre_attn_scalar={config.query_pre_attn_scalar!r}")
  if not gemma and any(t != AttentionType.GLOBAL for t in config.attention_types):
    wrong.append("sliding-window layers")
  if wrong:
    kind = "Gemma 3" if gemma else "Llama-family"
    raise ValueError(f"this {kind} config has {', '.join(wrong)}, which no transformers class computes: not exported")
  if gemma:
    return "gemma3_text"
  return "qwen2" if config.qkv_bias else "llama"


def _number(x: float) -> float | int:
  """x as config.json writes it: an int when whole (transformers 5 checks field types), else the
  shortest decimal of its float32 value (what a GGUF file held: 1e-06, not 9.99999997e-07)."""
  x = float(x)
  return int(x) if x.is_integer() and "e" not in repr(x) else float(str(np.float32(x)))


def _rope(config: TransformerConfig) -> dict:
  """The global layers' rope_parameters (transformers 5's field)."""
  rope = {"rope_type": "default", "rope_theta": _number(config.rope_base_global)}
  if config.rope_scale_global != 1.0:
    rope |= {"rope_type": "linear", "factor": config.rope_scale_global}
  if config.rope_llama3 is not None:
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    rope |= {"rope_type": "llama3", **dict(zip(keys, config.rope_llama3))}
    rope["original_max_position_embeddings"] = int(rope["original_max_position_embeddings"])
  return rope


def hf_config(config: TransformerConfig, tokens: dict, dtype: str = "bfloat16", reward: bool = False) -> dict:
  """config.json for config: the family's fields in transformers 5's names, with transformers
  4's (rope_theta, rope_scaling, rope_local_base_freq) beside them. tokens: bos/eos/pad ids."""
  kind = family(config)
  rope = _rope(config)
  out = {
    "architectures": [CLASSES[kind][1 if reward else 0]],
    "model_type": kind,
    "vocab_size": config.vocab_size,
    "hidden_size": config.embed_dim,
    "intermediate_size": config.hidden_dim,
    "num_hidden_layers": config.num_layers,
    "num_attention_heads": config.num_heads,
    "num_key_value_heads": config.num_kv_heads,
    "head_dim": config.head_dim,
    "rms_norm_eps": _number(config.norm_eps),
    "max_position_embeddings": config.max_len,
    "tie_word_embeddings": config.tie_embeddings,
    "bos_token_id": tokens.get("bos_token_id"),
    "eos_token_id": tokens.get("eos_token_id"),
    "pad_token_id": tokens.get("pad_token_id"),
    "dtype": dtype,
    "torch_dtype": dtype,
    "use_cache": True,
    "attention_dropout": 0.0,
    "rope_theta": rope["rope_theta"],
    "rope_scaling": None if rope["rope_type"] == "default" else rope,
  }
  if kind == "gemma3_text":
    local = {"rope_type": "default", "rope_theta": _number(config.rope_base_local)}
    out |= {
      "hidden_activation": "gelu_pytorch_tanh",
      "query_pre_attn_scalar": _number(config.query_pre_attn_scalar or config.head_dim),
      "sliding_window": config.sliding_window,
      "layer_types": [
        f"{'full' if t == AttentionType.GLOBAL else 'sliding'}_attention" for t in config.attention_types
      ],
      "final_logit_softcapping": config.final_logit_soft_cap,
      "attn_logit_softcapping": config.attn_logits_soft_cap,
      "rope_parameters": {"sliding_attention": local, "full_attention": rope},
      "rope_local_base_freq": local["rope_theta"],
      "attention_bias": False,
    }
  else:
    out |= {"hidden_act": "silu", "rope_parameters": rope, "attention_bias": False, "mlp_bias": False}
    if kind == "qwen2":
      out |= {
        "use_sliding_window": False,
        "sliding_window": None,
        "layer_types": ["full_attention"] * config.num_layers,
      }
  if reward:
    out |= {"num_labels": 1, "id2label": {"0": "reward"}, "label2id": {"reward": 0}, "problem_type": "regression"}
  return out


def _to_file(path: tuple[str, ...], w: np.ndarray, config: TransformerConfig) -> np.ndarray:
  """Our array at path as the [out, in] matrix (or vector) transformers stores: loading._kernel inverted."""
  name = path[-1]
  if name in ("q", "k", "v"):
    return w.reshape(config.embed_dim, -1).T
  if name == "o":
    return w.reshape(-1, config.embed_dim).T
  if name in ("gate", "up", "down"):
    return w.T
  if name in ("q_bias", "k_bias", "v_bias"):
    return w.reshape(-1)
  return w


def tensor_names(config: TransformerConfig, reward: bool = False) -> list[tuple[str, tuple[str, ...]]]:
  """(transformers' name, our path) of every tensor a folder of config holds, in file order.
  A reward model has no output embedding; its scalar head is `score.weight`."""
  hf_names = {} if config.norm_plus_one else LLAMA_HF_NAMES
  out = [
    (names[1], path)
    for path, names in TOP_TENSORS.items()
    if _present(path, config) and not (reward and path[-1] == "unembedding")
  ]
  for i in range(config.num_layers):
    for path, names in LAYER_TENSORS.items():
      if _present(path, config):
        out.append((f"model.layers.{i}.{hf_names.get(path, names[1])}", (f"blocks_{i}", *path)))
  if reward:
    out.append(("score.weight", ("score_kernel",)))
  return out


def file_tensor(path: tuple[str, ...], w: np.ndarray, config: TransformerConfig, dtype: str) -> np.ndarray:
  """Our host array at path, in transformers' layout and the export dtype, contiguous."""
  w = np.asarray(w, np.float32)
  w = w[None, :] if path == ("score_kernel",) else _to_file(path, w, config)
  return np.ascontiguousarray(w.astype(DTYPES[dtype][1]))


# ---------------------------------------------------------------- PEFT adapter folders

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"


def adapter_names(config: TransformerConfig, targets: Iterable[str]) -> list[tuple[str, tuple[str, ...]]]:
  """(PEFT's name, our path) of every LoRA tensor of a model of config with adapters on targets, in
  file order: the adapters of the projection transformers names `model.layers.i.self_attn.q_proj`
  are `base_model.model.model.layers.i.self_attn.q_proj.lora_A.weight` and `...lora_B.weight`."""
  out = []
  for name, path in tensor_names(config):
    if len(path) > 1 and path[-1] in targets:
      module = "base_model.model." + name.removesuffix(".weight")
      out += [(f"{module}.lora_A.weight", (*path[:-1], f"{path[-1]}_lora_a"))]
      out += [(f"{module}.lora_B.weight", (*path[:-1], f"{path[-1]}_lora_b"))]
  return out


def adapter_tensor(path: tuple[str, ...], w: np.ndarray, dtype: str) -> np.ndarray:
  """Our adapter at path as PEFT stores it: A [in dims..., rank] -> lora_A [rank, in], B [rank, out
  dims...] -> lora_B [out, rank]; the in and out dims flatten as the kernel's do (_to_file), so
  lora_B @ lora_A is the [out, in] update of the matrix transformers holds."""
  w = np.asarray(w, np.float32)
  w = w.reshape(-1, w.shape[-1]).T if path[-1].endswith("_lora_a") else w.reshape(w.shape[0], -1).T
  return np.ascontiguousarray(w.astype(DTYPES[dtype][1]))


def adapter_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, int]:
  """The shape adapter_tensor gives our adapter of `shape` at path, computing nothing."""
  if path[-1].endswith("_lora_a"):
    return int(shape[-1]), int(np.prod(shape[:-1]))
  return int(np.prod(shape[1:])), int(shape[0])


def adapter_config(config: TransformerConfig, rank: int, alpha: float, targets: Iterable[str], base: str) -> dict:
  """adapter_config.json: PEFT's LoRA settings for the adapters (its scaling alpha / rank is ours)
  on the base model named by base (a folder or hub name transformers loads)."""
  modules = sorted({name.rsplit(".", 3)[1] for name, _ in adapter_names(config, targets)})
  return {
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "base_model_name_or_path": base,
    "r": rank,
    "lora_alpha": _number(alpha),
    "target_modules": modules,
    "lora_dropout": 0.0,
    "bias": "none",
    "fan_in_fan_out": False,
    "use_rslora": False,
    "use_dora": False,
    "modules_to_save": None,
    "inference_mode": True,
  }


def file_shape(path: tuple[str, ...], config: TransformerConfig) -> tuple[int, ...]:
  """The shape of the tensor at our path in a folder of config, computing nothing."""
  return (1, config.embed_dim) if path == ("score_kernel",) else _expected_shape(path, config)


def _nbytes(shape: tuple[int, ...], itemsize: int) -> int:
  return int(np.prod(shape, dtype=np.int64)) * itemsize


def plan_shards(entries: list[tuple[str, tuple[int, ...]]], itemsize: int, max_bytes: int = SHARD_BYTES) -> list[list]:
  """entries (name, shape) split in order into shards of at most max_bytes each (a tensor larger
  than that alone in its shard)."""
  shards, size = [[]], 0
  for name, shape in entries:
    nbytes = _nbytes(shape, itemsize)
    if shards[-1] and size + nbytes > max_bytes:
      shards.append([])
      size = 0
    shards[-1].append((name, shape))
    size += nbytes
  return shards


def safetensors_header(entries: list[tuple[str, tuple[int, ...]]], dtype: str, metadata: dict | None = None) -> bytes:
  """The 8-byte length and JSON header of a safetensors file holding entries (name, shape) of one
  dtype, in order, padded with spaces to 8 bytes."""
  code, np_dtype = DTYPES[dtype]
  itemsize, header, offset = np.dtype(np_dtype).itemsize, {}, 0
  for name, shape in entries:
    nbytes = _nbytes(shape, itemsize)
    header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  if metadata:
    header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)
  return struct.pack("<Q", len(text)) + text


def write_safetensors(
  path: str | None, entries: list[tuple[str, tuple[int, ...]]], arrays: Iterable[np.ndarray], dtype: str
) -> None:
  """Writes entries' arrays (one at a time from `arrays`, in entries' order) to a safetensors file
  at path; path None consumes them without writing (a process other than the writer)."""
  out = open(path, "wb") if path is not None else None
  try:
    if out is not None:
      out.write(safetensors_header(entries, dtype, {"format": "pt"}))
    for (name, shape), array in zip(entries, arrays, strict=True):
      if tuple(array.shape) != tuple(shape) or array.dtype != np.dtype(DTYPES[dtype][1]):
        raise ValueError(f"tensor {name!r}: {array.dtype}{array.shape}, the header says {dtype}{tuple(shape)}")
      if out is not None:
        out.write(array.tobytes())
  finally:
    if out is not None:
      out.close()


def write_weights(
  directory: str | None,
  entries: list[tuple[str, tuple[int, ...]]],
  tensor: Callable[[str], np.ndarray],
  dtype: str,
  max_shard_bytes: int = SHARD_BYTES,
) -> list[str]:
  """model.safetensors, or model-0000i-of-0000n.safetensors and model.safetensors.index.json
  when the weights are over max_shard_bytes, into directory (None: gather without writing).
  tensor(name) gives each array in file layout and dtype, called once per name in order. The
  files' names."""
  itemsize = np.dtype(DTYPES[dtype][1]).itemsize
  shards = plan_shards(entries, itemsize, max_shard_bytes)
  names = (
    [WEIGHTS_FILE]
    if len(shards) == 1
    else [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
  )
  for name, shard in zip(names, shards):
    target = None if directory is None else os.path.join(directory, name)
    write_safetensors(target, shard, (tensor(n) for n, _ in shard), dtype)
  if len(shards) > 1 and directory is not None:
    total = sum(_nbytes(s, itemsize) for _, s in entries)
    index = {
      "metadata": {"total_size": total},
      "weight_map": {n: f for f, shard in zip(names, shards) for n, _ in shard},
    }
    with open(os.path.join(directory, INDEX_FILE), "w", encoding="utf-8") as f:
      json.dump(index, f, indent=1)
  return names


# ---------------------------------------------------------------- tokenizers


def _byte_to_unicode() -> dict[int, str]:
  """Byte-level BPE's printable stand-in for each byte: printable Latin-1 bytes are themselves,
  the others the code points from 256 up, in byte order."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def byte_tokenizer(vocab):
  """seqio's byte vocabulary (id = byte + 3 after pad 0, EOS 1, UNK 2) as a tokenizers.Tokenizer:
  a byte-level BPE without merges, so every byte is its own token."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

  specials = {"<pad>": vocab.pad_id, "</s>": vocab.eos_id, "<unk>": vocab.unk_id}
  table = {char: b + 3 for b, char in _byte_to_unicode().items()}
  tokenizer = Tokenizer(models.BPE(vocab={**specials, **table}, merges=[], fuse_unk=False))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
  return tokenizer


def chat_template(chat, add_bos: bool) -> str:
  """A Jinja chat template rendering messages as data.chat's format does (ChatFormat.prompt): BOS
  where the model reads it, the default system turn, each turn stripped, the model's turn opened
  on add_generation_prompt."""
  lit = json.dumps  # a JSON string is a Jinja string literal
  before, _, after = chat.user.partition("user")
  return "".join(
    [
      "{{ bos_token }}" if add_bos else "",
      f"{{{{ {lit(chat.system_turn)} }}}}" if chat.system_turn else "",
      "{% for message in messages %}",
      f"{{% if message['role'] == 'user' %}}{{{{ {lit(chat.user)} }}}}",
      f"{{% elif message['role'] == 'assistant' %}}{{{{ {lit(chat.assistant)} }}}}",
      f"{{% else %}}{{{{ {lit(before)} ~ message['role'] ~ {lit(after)} }}}}{{% endif %}}",
      f"{{{{ message['content'] | trim }}}}{{{{ {lit(chat.end)} }}}}",
      "{% endfor %}",
      f"{{% if add_generation_prompt %}}{{{{ {lit(chat.assistant)} }}}}{{% endif %}}",
    ]
  )


def _end_of_turn_ids(vocab) -> list[int]:
  """The ids of the chat formats' end-of-turn markers that vocab has as one token (Gemma's
  <end_of_turn>, ChatML's <|im_end|>, Llama 3's <|eot_id|>), where one differs from EOS."""
  from rlaif_jax.data import chat

  ids = []
  for fmt in chat.FORMATS.values():
    encoded = list(vocab.encode(fmt.end_of_turn))
    if len(encoded) == 1 and encoded[0] not in (vocab.eos_id, *ids):
      ids.append(int(encoded[0]))
  return ids


def tokenizer_files(vocab, directory: str, kind: str, max_len: int) -> dict:
  """Writes vocab (ours: SentencePiece, byte-level BPE or bytes; a data.ChatVocabulary's base,
  with its format as the chat template where the tokenizer has none) as transformers reads it:
  tokenizer.model or tokenizer.json, tokenizer_config.json (BOS setting, special tokens, chat
  template) and special_tokens_map.json. The special ids, for config.json and generation_config.json."""
  from rlaif_jax.data import bpe, encoder

  base, chat = getattr(vocab, "base", vocab), getattr(vocab, "chat", None)
  bos = encoder.bos(base)
  add_bos = bos is not None
  template = getattr(base, "chat_template", None) or (chat_template(chat, add_bos) if chat else None)
  ids = {"eos": base.eos_id, "pad": base.pad_id, "unk": getattr(base, "unk_id", None), "bos": bos}
  if hasattr(base, "sp_model"):  # SentencePiece (Gemma, Llama 2)
    with open(os.path.join(directory, "tokenizer.model"), "wb") as f:
      f.write(base.sp_model)
    pieces = base.tokenizer
    ids["bos"] = ids["bos"] if add_bos else (pieces.bos_id() if pieces.bos_id() >= 0 else None)
    token = lambda i: pieces.id_to_piece(int(i))  # noqa: E731
    tokenizer_class = "GemmaTokenizer" if kind == "gemma3_text" else "LlamaTokenizer"
  else:
    try:
      from tokenizers import Tokenizer, processors
    except ImportError:
      raise ImportError(
        "writing a byte-level tokenizer.json needs the tokenizers package: pip install -e '.[llama]'"
      ) from None
    if isinstance(base, bpe.BpeVocabulary):
      tokenizer = Tokenizer.from_file(os.path.join(base.directory, bpe.TOKENIZER_JSON))
      ids["bos"] = base.specials.get("bos_id")
    else:  # seqio's bytes
      tokenizer = byte_tokenizer(base)
    token = tokenizer.id_to_token
    if add_bos:  # transformers' generic fast tokenizer adds BOS through the tokenizer's post-processor
      first = token(bos)
      tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{first} $A", pair=f"{first} $A $B", special_tokens=[(first, bos)]
      )
    tokenizer.save(os.path.join(directory, "tokenizer.json"))
    tokenizer_class = "PreTrainedTokenizerFast"
  specials = {f"{k}_token": token(i) for k, i in ids.items() if i is not None and i >= 0}
  settings = {
    "tokenizer_class": tokenizer_class,
    "add_bos_token": add_bos,
    "add_eos_token": False,
    **specials,
    "model_max_length": max_len,
    "clean_up_tokenization_spaces": False,
    "spaces_between_special_tokens": False,
  }
  if template:
    settings["chat_template"] = template
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(settings, f, indent=1)
  with open(os.path.join(directory, "special_tokens_map.json"), "w", encoding="utf-8") as f:
    json.dump(specials, f, indent=1)
  end = _end_of_turn_ids(base)
  return {
    "bos_token_id": ids["bos"],
    "eos_token_id": base.eos_id,
    "pad_token_id": base.pad_id,
    "stop_token_ids": [base.eos_id, *end],
  }


def generation_config(tokens: dict) -> dict:
  """generation_config.json: generation stops at EOS and at each end-of-turn token."""
  stops = tokens["stop_token_ids"]
  return {
    "bos_token_id": tokens["bos_token_id"],
    "eos_token_id": stops if len(stops) > 1 else stops[0],
    "pad_token_id": tokens["pad_token_id"],
  }
