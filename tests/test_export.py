"""Hugging Face folders out (models.export, the export_hf stage): transformers loads what we write
and computes what we compute. Tiny random Gemma 3, Llama and Qwen 2 configs with every weight
perturbed (biases and norms too, so a misplaced tensor shows); the real Gemma 3 270M is checked
in test_pretrained."""

import json
import os

import jax
import numpy as np
import pytest

from rlaif_jax import data, models, partitioning
from rlaif_jax.checkpoints import Checkpointer, CheckpointError
from rlaif_jax.models import export, pretrained
from rlaif_jax.stages.export import run_export_hf

pytestmark = pytest.mark.slow  # folders written and read back by transformers (torch)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CONFIGS = {
  "gemma3_text": models.tiny(),
  "qwen2": models.tiny_llama(),  # q/k/v biases, Llama 3 RoPE scaling, untied output
  "llama": models.tiny_llama(qkv_bias=False, tie_embeddings=True, rope_llama3=None, rope_scale_global=2.0),
}
TEXTS = ["Human: what is the capital of France?\n\nAssistant:", "", "héllo wörld ✓ \n\t x"]


def _mesh():
  return partitioning.make_mesh({"data": 1}, jax.devices()[:1])


def _checkpoint(folder, config, seed=0, scalar_head=False) -> str:
  """A trainer-style checkpoints folder of config's random init with every array perturbed."""
  model = models.Transformer(config, scalar_head=scalar_head)
  params = jax.device_get(models.init_params(model, jax.random.PRNGKey(seed)))
  rng = np.random.default_rng(seed)
  params = jax.tree_util.tree_map(lambda x: np.asarray(x + 0.05 * rng.standard_normal(x.shape), np.float32), params)
  checkpointer = Checkpointer(os.path.join(folder, "checkpoints"))
  checkpointer.save(3, {"step": np.asarray(3, np.int32), "params": params}, force=True)
  checkpointer.close()
  return os.path.join(folder, "checkpoints")


def _ours(source, scalar_head=False):
  return source.load(_mesh(), scalar_head=scalar_head)


def _our_logits(loaded, tokens):
  return np.asarray(loaded.model.apply({"params": loaded.params}, jax.numpy.asarray(tokens)))


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_transformers_loads_the_folder_and_computes_our_logits_tokens_and_greedy_replies(kind, tmp_path):
  config = CONFIGS[kind]
  source = models.ModelSource(config=config, checkpoint=_checkpoint(tmp_path / "run", config))
  shard = 0.0002 if kind == "llama" else 5.0  # about 200 kB: the Llama folder is written in shards
  summary = run_export_hf(str(tmp_path / "hf"), source, dtype="float32", max_shard_gb=shard)
  out = summary["out"]
  assert summary["architecture"] == export.CLASSES[kind][0]
  if kind == "llama":
    assert len(summary["files"]) > 1 and os.path.exists(os.path.join(out, export.INDEX_FILE))
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  assert type(hf).__name__ == export.CLASSES[kind][0]
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  ours = _ours(source)

  tokens = np.random.default_rng(1).integers(3, config.vocab_size, (2, 40))  # past the Gemma window of 16
  with torch.no_grad():
    want = hf(torch.as_tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(_our_logits(ours, tokens), want, atol=1e-4, rtol=1e-4)

  for text in TEXTS:
    ids = data.encoder.context(ours.vocab, text).ids
    assert tokenizer(text).input_ids == ids, repr(text)
    assert tokenizer.decode(ids) == text
  import real_parity

  (mine,) = real_parity.greedy_tokens(ours, TEXTS[:1], 8)
  assert real_parity.hf_greedy(hf, data.encoder.context(ours.vocab, TEXTS[0]).ids, 8, ours.vocab.eos_id) == mine

  # Round trip: the folder read back as PRETRAINED gives the same parameters, bit for bit
  config_back, params_back, _ = pretrained.read(out)
  same = dict(attention_pattern=config.attention_pattern, query_pre_attn_scalar=config.query_pre_attn_scalar)
  assert (config_back.attention_types, config_back.query_scale) == (config.attention_types, config.query_scale)
  assert config_back.replace(**same) == config
  flat = lambda t: {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}  # noqa: E731
  mine, back = flat(jax.device_get(ours.params)), flat(params_back)
  assert mine.keys() == back.keys()
  for key in mine:
    np.testing.assert_array_equal(back[key], mine[key], err_msg=key)
  generation = json.load(open(os.path.join(out, "generation_config.json")))
  assert generation["eos_token_id"] == ours.vocab.eos_id and generation["pad_token_id"] == ours.vocab.pad_id


@pytest.mark.parametrize("chat_format", ["chatml", "gemma"])
def test_a_chat_policy_gets_its_format_as_the_folders_chat_template(chat_format, tmp_path):
  """The chat template written for a policy in a chat format renders an hh-rlhf dialogue, through
  transformers' apply_chat_template, to the ids data.encoder gives the policy (ChatFormat.prompt)."""
  source = models.ModelSource(config=models.tiny(), chat_format=chat_format)
  out = run_export_hf(str(tmp_path / "hf"), source, dtype="float32")["out"]
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  vocab = _ours(source).vocab
  dialogue = "\n\nHuman: What is 2+2? \n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant:"
  turns = [("user", " What is 2+2? "), ("assistant", " 4."), ("user", "And 3+3?\n")]  # stripped, as the encoder does
  messages = [{"role": role, "content": text} for role, text in turns]
  rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  rendered = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
  assert rendered == data.encoder.context(vocab, dialogue).ids
  assert vocab.decode(rendered).startswith(vocab.chat.user) and vocab.decode(rendered).endswith(vocab.chat.assistant)


def test_bfloat16_by_default_and_the_model_card(tmp_path):
  from safetensors import safe_open

  config = CONFIGS["gemma3_text"]
  source = models.ModelSource(config=config, checkpoint=_checkpoint(tmp_path / "run", config))
  (tmp_path / "run" / "summary.json").write_text(json.dumps({"steps": 3, "final_loss": 1.25}))
  (tmp_path / "run" / "report.md").write_text("# report\n")
  out = run_export_hf(str(tmp_path / "hf"), source)["out"]
  ours = jax.device_get(_ours(source).params)
  with safe_open(os.path.join(out, export.WEIGHTS_FILE), framework="pt") as f:
    q = f.get_tensor("model.layers.1.self_attn.q_proj.weight")
    assert q.dtype == torch.bfloat16
    want = ours["blocks_1"]["attn"]["q"].reshape(config.embed_dim, -1).T
    np.testing.assert_array_equal(q.float().numpy(), torch.as_tensor(want).bfloat16().float().numpy())
  assert json.load(open(os.path.join(out, "config.json")))["dtype"] == "bfloat16"
  card = open(os.path.join(out, "README.md")).read()
  assert "| final_loss | 1.25 |" in card and str(tmp_path / "run" / "report.md") in card and "(step 3)" in card
  hf = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert hf.dtype == torch.bfloat16


def test_a_reward_model_exports_as_sequence_classification_with_its_statistics(tmp_path):
  from rlaif_jax import reward

  config = CONFIGS["gemma3_text"]
  run = tmp_path / "rm"
  checkpoint = _checkpoint(run, config, seed=4, scalar_head=True)
  stats = {"mean": 0.5, "std": 2.0, "count": 10}
  (run / reward.STATS_FILE).write_text(json.dumps(stats))
  source = models.ModelSource(config=config, checkpoint=checkpoint)
  summary = run_export_hf(str(tmp_path / "hf"), source, dtype="float32")  # a reward model: found, not told
  assert summary["architecture"] == "Gemma3TextForSequenceClassification"
  written = json.load(open(os.path.join(summary["out"], reward.STATS_FILE)))
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(summary["out"], dtype=torch.float32).eval()

  loaded = _ours(source, scalar_head=True)
  scorer = reward.RewardScorer(loaded.model, loaded.params, loaded.vocab, max_len=64, batch_size=4, mesh=_mesh())
  contexts, responses = ["Q: 2+2?\nA:", "Say hi", "x"], [" 4", " hi there, friend", ""]
  mine = scorer.score(contexts, responses)
  assert np.abs(mine).max() > 0.1  # a head that scores something
  rows = [data.encoder.example(loaded.vocab, c, targets=r) for c, r in zip(contexts, responses)]
  arrays, _ = data.sft_features(rows, 64, loaded.vocab.pad_id)
  with torch.no_grad():
    logits = hf(
      input_ids=torch.as_tensor(arrays["tokens"]), attention_mask=torch.as_tensor(arrays["input_mask"].astype(np.int64))
    ).logits
  np.testing.assert_allclose(logits[:, 0].numpy() + written["score_bias"], mine, atol=1e-4)
  assert {k: written[k] for k in stats} == stats


def test_lora_adapters_export_as_a_peft_folder_that_peft_reads_onto_the_exported_base(tmp_path):
  """A LoRA SFT's adapters (every projection, rank 4) as a PEFT folder: peft reads them onto the
  base folder the same recipe wrote and computes our logits (adapters merged), which differ from
  the base's; the adapter file holds A and B alone. A PEFT export of a run without adapters, of a
  reward model or without a base to name stops before anything is written."""
  peft = pytest.importorskip("peft")
  import rlaif_jax.tasks  # noqa: F401  (registers tldr_sft)
  from rlaif_jax import optimizers, trainer
  from rlaif_jax.stages.sft import run_sft

  config = CONFIGS["gemma3_text"]
  base = models.ModelSource(config=config, seed=2)
  run_sft(
    str(tmp_path / "sft"), base, max_len=64, batch_size=8, num_steps=3, eval_split=None, num_samples=0,
    optimizer=optimizers.adamw(5e-2), lora=models.LoraConfig(4, 8.0), mesh_shape={"data": 1},
    fit=trainer.FitConfig(tensorboard=False, progress=False),
  )  # fmt: skip
  trained = base.replace(checkpoint=str(tmp_path / "sft" / "checkpoints"))
  base_out = run_export_hf(str(tmp_path / "base"), base, dtype="float32")["out"]
  summary = run_export_hf(str(tmp_path / "peft"), trained, dtype="float32", peft=True, peft_base=base_out)
  out = summary["out"]
  assert sorted(os.listdir(out)) == sorted(
    ["README.md", export.ADAPTER_CONFIG, export.ADAPTER_WEIGHTS, "special_tokens_map.json", "tokenizer.json",
     "tokenizer_config.json"]
  )  # fmt: skip
  settings = json.load(open(os.path.join(out, export.ADAPTER_CONFIG)))
  assert (settings["r"], settings["lora_alpha"], settings["base_model_name_or_path"]) == (4, 8, base_out)
  assert summary["tensors"] == 2 * 7 * config.num_layers  # A and B of q, k, v, o, gate, up, down per block
  assert "base_model: " + base_out in open(os.path.join(out, "README.md")).read()

  hf_base = transformers.AutoModelForCausalLM.from_pretrained(base_out, dtype=torch.float32).eval()
  tokens = np.random.default_rng(3).integers(3, config.vocab_size, (2, 24))
  with torch.no_grad():
    before = hf_base(torch.as_tensor(tokens)).logits.numpy()
    adapted = peft.PeftModel.from_pretrained(hf_base, out).eval()
    after = adapted(torch.as_tensor(tokens)).logits.numpy()
  mine = _our_logits(_ours(trained), tokens)  # read as a ModelSource: the adapters merged into the base
  np.testing.assert_allclose(after, mine, atol=1e-4, rtol=1e-4)
  assert np.abs(after - before).max() > 1e-2  # the adapters change what the base computes

  with pytest.raises(CheckpointError, match="holds no LoRA adapters"):
    plain = models.ModelSource(config=config, checkpoint=_checkpoint(tmp_path / "full", config))
    run_export_hf(str(tmp_path / "x"), plain, peft=True, peft_base=base_out)
  with pytest.raises(ValueError, match=r"peft \(PEFT\)=True needs a LoRA run's checkpoints"):
    run_export_hf(str(tmp_path / "x"), base, peft=True, peft_base=base_out)
  with pytest.raises(ValueError, match=r"a reward model's adapters are exported merged"):
    run_export_hf(str(tmp_path / "x"), trained, peft=True, peft_base=base_out, reward=True)
  with pytest.raises(ValueError, match=r"peft_base \(PEFT_BASE\): name the base model's Hugging Face folder"):
    run_export_hf(str(tmp_path / "x"), trained, peft=True)
  assert not (tmp_path / "x").exists()


def test_bad_settings_are_named_and_nothing_is_written(tmp_path):
  config = CONFIGS["gemma3_text"]
  checkpoint = _checkpoint(tmp_path / "run", config)
  source = models.ModelSource(config=config, checkpoint=checkpoint)
  empty = tmp_path / "not_a_checkpoint"
  empty.mkdir()
  (empty / "notes.txt").write_text("x")
  out = tmp_path / "out"
  with pytest.raises(CheckpointError, match=r"checkpoint \(SFT\)=.*holds no checkpoint steps"):
    run_export_hf(str(out), source.replace(checkpoint=str(empty)))
  with pytest.raises(CheckpointError, match=r"step \(STEP\)=7: .* has steps \[3\]"):
    run_export_hf(str(out), source.replace(step=7))
  with pytest.raises(ValueError, match=r"dtype \(DTYPE\)='int8'"):
    run_export_hf(str(out), source, dtype="int8")
  with pytest.raises(ValueError, match="activation='silu'.*no transformers class computes"):
    run_export_hf(str(out), models.ModelSource(config=config.replace(activation="silu")))
  assert not out.exists() and sorted(os.listdir(tmp_path)) == ["not_a_checkpoint", "run"]
  out.mkdir()
  (out / "mine.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match=r"out \(OUT\)=.*not empty"):
    run_export_hf(str(out), source)
  assert os.listdir(out) == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"


def test_safetensors_writer_against_the_library(tmp_path):
  """Our streamed writer's file reads back with the safetensors package: every dtype, the
  header's padding, shards planned in order with none over the limit but a lone large tensor."""
  from safetensors.numpy import load_file

  rng = np.random.default_rng(0)
  arrays = {
    f"t{i}": rng.standard_normal(shape).astype(np.float32) for i, shape in enumerate([(3, 5), (7,), (2, 2, 2), ()])
  }
  entries = [(k, v.shape) for k, v in arrays.items()]
  for dtype in ("float32", "float16"):
    path = str(tmp_path / f"{dtype}.safetensors")
    export.write_safetensors(path, entries, (v.astype(export.DTYPES[dtype][1]) for v in arrays.values()), dtype)
    back = load_file(path)
    for k, v in arrays.items():
      np.testing.assert_array_equal(back[k], v.astype(export.DTYPES[dtype][1]))
  shards = export.plan_shards([("a", (10,)), ("b", (30,)), ("c", (5,)), ("d", (6,))], 4, 60)
  assert shards == [[("a", (10,))], [("b", (30,))], [("c", (5,)), ("d", (6,))]]
  with pytest.raises(ValueError, match="tensor 't0'"):
    export.write_safetensors(None, entries[:1], [np.zeros((5, 3), np.float32)], "float32")
