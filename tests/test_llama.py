"""The Llama family by configuration: random Llama (Llama 3 RoPE scaling, untied output) and
Qwen 2 (q/k/v biases, tied) models built by Hugging Face transformers, saved as safetensors
folders and as GGUF files laid out as llama.cpp's converter writes them (query and key rows
permuted for 'llama'), load into our decoder with transformers' logits; a tiny Llama-family
model trains and samples like the Gemma-style one."""

import json

import jax
import numpy as np
import pytest

from rlaif_jax import models, partitioning
from rlaif_jax.checkpoints import CheckpointError
from rlaif_jax.models import loading, pretrained

pytestmark = pytest.mark.slow  # Llama-family models through the stages and the command line

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

SHAPES = dict(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
LLAMA3["original_max_position_embeddings"] = 16  # short, so the three frequency bands all occur


def hf_model(kind: str, llama3: bool = True):
  torch.manual_seed(0)
  if kind == "llama":
    config = transformers.LlamaConfig(
      **SHAPES, num_key_value_heads=2, rope_theta=500.0, rope_scaling=LLAMA3 if llama3 else None,
      tie_word_embeddings=False,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
  else:
    config = transformers.Qwen2Config(**SHAPES, num_key_value_heads=1, rope_theta=1000.0, tie_word_embeddings=True)
    model = transformers.Qwen2ForCausalLM(config)
  with torch.no_grad():  # norms away from 1 and biases away from 0, so a misplaced one shows
    for name, p in model.named_parameters():
      if name.endswith("norm.weight") or name.endswith(".bias"):
        p.add_(0.3 * torch.randn_like(p))
  return model.eval()


def hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


def our_logits(config, params, tokens):
  return np.asarray(models.Transformer(config).apply({"params": params}, np.asarray(tokens, np.int32)))


TOKENS = np.random.default_rng(0).integers(0, 96, size=(2, 40))  # past the original context of 16


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_safetensors_folder_gives_transformers_logits(tmp_path, kind):
  model = hf_model(kind)
  model.save_pretrained(tmp_path, safe_serialization=True)
  config, params = loading.load_safetensors(str(tmp_path))
  assert (config.tie_embeddings, config.qkv_bias) == ((False, False) if kind == "llama" else (True, True))
  assert config.rope_llama3 == ((8.0, 1.0, 4.0, 16.0) if kind == "llama" else None)
  np.testing.assert_allclose(our_logits(config, params, TOKENS), hf_logits(model, TOKENS), atol=2e-4, rtol=1e-4)


def llama_cpp_permute(w, heads):
  """What llama.cpp's convert_hf_to_gguf.py does to a 'llama' model's q and k rows."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_cpp_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
  """The rope_freqs tensor llama.cpp's convert_hf_to_gguf.py writes for a Llama 3.1 model, in numpy."""
  freqs = 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2) / head_dim)
  old, low, high, factor = (
    rope[k] for k in ("original_max_position_embeddings", "low_freq_factor", "high_freq_factor", "factor")
  )
  out = []
  for wavelength in 2 * np.pi / freqs:
    if wavelength < old / high:
      out.append(1.0)
    elif wavelength > old / low:
      out.append(factor)
    else:
      smooth = (old / wavelength - low) / (high - low)
      out.append(1 / ((1 - smooth) / factor + smooth))
  return np.asarray(out, np.float32)


def write_gguf(model, kind: str, path) -> str:
  """A float32 GGUF file of a transformers model, with llama.cpp's names, metadata and permutation."""
  c = model.config
  writer = gguf.GGUFWriter(str(path), kind)
  writer.add_block_count(c.num_hidden_layers)
  writer.add_embedding_length(c.hidden_size)
  writer.add_feed_forward_length(c.intermediate_size)
  writer.add_head_count(c.num_attention_heads)
  writer.add_head_count_kv(c.num_key_value_heads)
  writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(c.rms_norm_eps)
  writer.add_context_length(c.max_position_embeddings)
  writer.add_vocab_size(c.vocab_size)
  names = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"}
  layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
  layer |= {f"self_attn.{x}_proj": f"attn_{x}" for x in "qkv"} | {"self_attn.o_proj": "attn_output"}
  layer |= {f"mlp.{x}_proj": f"ffn_{x}" for x in ("gate", "up", "down")}
  for name, tensor in model.state_dict().items():
    w = tensor.numpy().astype(np.float32)
    parts = name.removeprefix("model.").split(".")
    if parts[0] == "layers":
      i, rest, suffix = parts[1], ".".join(parts[2:-1]), parts[-1]
      if kind == "llama" and rest in ("self_attn.q_proj", "self_attn.k_proj"):
        w = llama_cpp_permute(w, c.num_attention_heads if "q_proj" in rest else c.num_key_value_heads)
      out = f"blk.{i}.{layer[rest]}.{suffix}"
    else:
      if parts[0] == "lm_head" and c.tie_word_embeddings:
        continue
      out = f"{names[parts[0]]}.{parts[-1]}"
    writer.add_tensor(out, w)
  rope = c.rope_parameters
  if rope.get("rope_type") == "llama3":  # llama.cpp keeps Llama 3.1's scaling as a factor per frequency
    writer.add_tensor("rope_freqs.weight", llama_cpp_rope_factors(rope, c.hidden_size // c.num_attention_heads))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return str(path)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_gguf_file_gives_transformers_logits(tmp_path, kind):
  """The 'llama' file's permuted q/k rows are permuted back, and its Llama 3.1 RoPE scaling read
  from the rope_freqs factors (all three frequency bands occur); 'qwen2' files are not permuted."""
  model = hf_model(kind)
  path = write_gguf(model, kind, tmp_path / f"{kind}.gguf")
  config, params = loading.load_gguf(path)
  assert not config.norm_plus_one and config.activation == "silu"
  if kind == "llama":
    factors = np.asarray(config.rope_freq_factors)
    assert factors.shape == (6,) and factors[-1] == 8.0 and ((factors > 1) & (factors < 8)).any()
  else:
    assert config.rope_freq_factors is None
  np.testing.assert_allclose(our_logits(config, params, TOKENS), hf_logits(model, TOKENS), atol=2e-4, rtol=1e-4)


def test_rope_freqs_factors_are_llama_31s_scaling():
  """Llama 3.1's real RoPE (head_dim 128, theta 500,000, factor 8 over 8,192 positions: all three
  bands occur) gives the same frequencies from its HF settings and from llama.cpp's factors."""
  from rlaif_jax.models import layers

  rope = {**LLAMA3, "rope_theta": 500_000.0, "original_max_position_embeddings": 8192}  # transformers adds to LLAMA3
  factors = llama_cpp_rope_factors(rope, 128)
  assert (factors == 1).any() and (factors == 8).any() and ((factors > 1) & (factors < 8)).any()
  from_hf = layers.rope_inv_freq(128, 500_000.0, llama3=(8.0, 1.0, 4.0, 8192.0))
  np.testing.assert_allclose(layers.rope_inv_freq(128, 500_000.0, factors=tuple(factors)), from_hf, rtol=1e-6)


def test_unpermute_inverts_llama_cpps_permutation():
  w = np.random.default_rng(1).normal(size=(4 * 8, 5))
  assert np.array_equal(loading.unpermute_rotary(llama_cpp_permute(w, 4), 4), w)
  assert not np.array_equal(llama_cpp_permute(w, 4), w)


def test_unsupported_llama_variants_are_named(tmp_path):
  model = hf_model("qwen2")
  model.save_pretrained(tmp_path, safe_serialization=True)
  config = json.loads((tmp_path / "config.json").read_text())
  for change, message in (
    ({"use_sliding_window": True}, "sliding-window"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'"),
    ({"model_type": "phi3"}, "model_type 'phi3'; supported"),
  ):
    (tmp_path / "config.json").write_text(json.dumps(config | change))
    with pytest.raises(CheckpointError, match=message):
      loading.hf_config(str(tmp_path))


def test_a_tiny_llama_trains_and_samples_like_the_gemma_style_decoder(tmp_path):
  """Every Llama switch on (SwiGLU, plain norms initialized to one, untied output, q/k/v biases,
  Llama 3 RoPE): a converted-config round trip, the cached sampler's logits equal a full pass."""
  config = models.tiny_llama()
  (tmp_path / "config.json").write_text(json.dumps(pretrained.config_to_json(config)))
  assert pretrained.config_from_json(str(tmp_path / "config.json")) == config
  model = models.Transformer(config)
  params = models.init_params(model, jax.random.PRNGKey(0))
  assert "unembedding" in params["embedder"] and "q_bias" in params["blocks_0"]["attn"]
  assert float(params["final_norm"]["scale"][0]) == 1.0 and "post_attn_norm" not in params["blocks_0"]
  tokens = np.random.default_rng(2).integers(0, 264, size=(2, 12)).astype(np.int32)
  full = np.asarray(model.apply({"params": params}, tokens))
  cache = models.init_cache(config, 2, 16)
  positions = np.broadcast_to(np.arange(12), (2, 12))
  step_logits = []
  for t in range(12):
    hidden, cache = model.apply(
      {"params": params}, tokens[:, t : t + 1], None, positions[:, t : t + 1], cache,
      method=models.Transformer.hidden_states,
    )  # fmt: skip
    step_logits.append(np.asarray(model.apply({"params": params}, hidden, method=models.Transformer.logits))[:, 0])
  np.testing.assert_allclose(np.stack(step_logits, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_a_llama_family_model_runs_sft_labeling_reward_model_and_rl_from_the_cli(tmp_path):
  """The distilled-RLAIF experiment (SFT, AI labels, RM, RL) on the tiny Llama-family decoder."""
  import os
  import subprocess
  import sys

  from pipeline_outputs import SHRUNK_SFT

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  bindings = [*SHRUNK_SFT, f"WORKDIR='{tmp_path}'", "models.preset.name='tiny_llama'", "run_label.limit=8"]
  bindings += ["RM_STEPS=4", "rm.Fit.eval_every=4", "run_rm.max_len=256", "RL_ITERATIONS=2", "run_rl.batch_size=4"]
  bindings += ["run_rl.max_prompt_len=128", "rl.RolloutSampling.max_new_tokens=8"]
  args = [sys.executable, "-m", "rlaif_jax.main", "--gin_file=gin/experiments/tiny_rl_rlaif.gin"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = subprocess.run(args + [f"--gin_bindings={b}" for b in bindings], cwd=root, env=env, capture_output=True,
                       text=True, timeout=600)  # fmt: skip
  assert out.returncode == 0, out.stderr[-3000:]
  assert "preset.name = 'tiny_llama'" in (tmp_path / "rl" / "config.gin").read_text()
  policy = models.ModelSource(config=models.tiny_llama(), checkpoint=str(tmp_path / "rl" / "checkpoints"))
  policy = policy.load(partitioning.make_mesh({"data": 1}, jax.devices()[:1]))
  assert "unembedding" in policy.params["embedder"] and "q_bias" in policy.params["blocks_0"]["attn"]
  labels = [json.loads(line) for line in open(tmp_path / "label" / "labels.jsonl")]
  assert len(labels) == 8 and all(0.0 <= r["p_a"] <= 1.0 for r in labels)
  rl = json.load(open(tmp_path / "rl" / "summary.json"))
  assert rl["iterations"] == 2 and np.isfinite(rl["kl_last"]) and rl["compilations"]["update_step"] == 1


def test_a_multimodal_gemma3_folder_loads_its_text_model_with_transformers_logits(tmp_path):
  """Gemma 3 4B-27B ship as Gemma3ForConditionalGeneration: the text model's config sits under
  text_config (transformers 5: RoPE per layer type in rope_parameters, here the 4B's linear
  scaling by 8 on global layers) and its weights under language_model.; the vision tower is skipped."""
  torch.manual_seed(0)
  text = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=6, num_attention_heads=2)
  text |= dict(
    num_key_value_heads=1, head_dim=16, sliding_window=8, rope_scaling={"rope_type": "linear", "factor": 8.0}
  )
  vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28)
  config = transformers.Gemma3Config(text_config=text, vision_config=vision | {"patch_size": 14}, mm_tokens_per_image=4)
  model = transformers.Gemma3ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.3 * torch.randn_like(p))
  model.save_pretrained(tmp_path, safe_serialization=True)
  ours, params = loading.load_safetensors(str(tmp_path))
  assert (ours.rope_scale_global, ours.attention_types[5], ours.attention_types[0]) == (
    8.0,
    models.AttentionType.GLOBAL,
    models.AttentionType.LOCAL,
  )
  tokens = np.random.default_rng(3).integers(0, 96, size=(2, 20))  # past the 8-token window
  np.testing.assert_allclose(our_logits(ours, params, tokens), hf_logits(model, tokens), atol=2e-4, rtol=1e-4)


TEXTS = [
  "Hello world, it's 2026: 1234567 apples cost $3.50!",
  "  leading spaces and   runs   of spaces  \n\n\ttabs\r\nand CRLF",
  "Ünïcödé — ‘quotes’ 你好 🙂 naïve café; e\u0301 (decomposed)",
  "don't WON'T I'M you're they'VE",
  "<|im_start|>user\nhi<|im_end|>",
  "x" * 40 + " 99999 " + "ab" * 20,
]


def trained_bpe_fields(tmp_path):
  """A small byte-level BPE (tokens in id order, merges, types) trained on TEXTS, as a GGUF file's
  tokenizer.ggml fields hold one; the last token is a control token."""
  from tokenizers import Tokenizer, pre_tokenizers, trainers
  from tokenizers import models as bpe_models

  tokenizer = Tokenizer(bpe_models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  trainer = trainers.BpeTrainer(
    vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
  )
  tokenizer.train_from_iterator(TEXTS * 20, trainer)
  model = json.loads(tokenizer.to_str())["model"]
  tokens = sorted(model["vocab"], key=model["vocab"].get) + ["<|im_end|>"]
  merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
  return tokens, merges, [1] * (len(tokens) - 1) + [3]


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_gguf_bpe_pre_tokenizers_split_as_transformers_does(tmp_path, pre):
  """A GGUF file whose tokenizer.ggml.pre is Llama 3's or Qwen 2's tokenizes as the tokenizer
  transformers builds for that model family from the same vocabulary and merges."""
  import importlib
  import inspect

  from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
  from tokenizers import models as bpe_models

  convert = importlib.import_module("transformers.convert_slow_tokenizer")

  tokens, merges, types = trained_bpe_fields(tmp_path)
  vocab, pairs = {t: i for i, t in enumerate(tokens)}, [tuple(m.split(" ")) for m in merges]
  if pre == "qwen2":
    want = convert.Qwen2Converter(types).converted(vocab, pairs)  # NFC, Qwen's split, bytes
  else:  # Llama 3's tokenizer.json: transformers' tiktoken split (runs of up to 3 digits), then bytes
    pattern = inspect.signature(convert.TikTokenConverter).parameters["pattern"].default
    want = Tokenizer(bpe_models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    split = pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False)
    want.pre_tokenizer = pre_tokenizers.Sequence(
      [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    want.decoder = decoders.ByteLevel()
  want.add_tokens([AddedToken("<|im_end|>", special=True, normalized=False)])

  writer = gguf.GGUFWriter(str(tmp_path / "tok.gguf"), "llama")
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre(pre)
  writer.add_token_list(tokens)
  writer.add_token_merges(merges)
  writer.add_token_types(types)
  writer.add_eos_token_id(len(tokens) - 1)
  writer.add_tensor("unused", np.zeros(1, np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  ours, specials = loading.gguf_tokenizer(str(tmp_path / "tok.gguf"))
  assert specials["eos_id"] == len(tokens) - 1
  digits = [piece for piece, _ in ours.pre_tokenizer.pre_tokenize_str("1234567")]
  assert digits == (list("1234567") if pre == "qwen2" else ["123", "456", "7"])
  for text in TEXTS + ["1234567", "e\u0301"]:
    assert ours.encode(text).ids == want.encode(text).ids, repr(text)
