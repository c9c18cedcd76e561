"""The conversion cache of `pretrained.converted`: entries keyed by a source's path and file
identity, refused sources that delete nothing, and leftovers of killed or concurrent
conversions. Tiny GGUF files and safetensors folders written here stand in for Gemma."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from rlaif_jax import models  # noqa: E402
from rlaif_jax.models import loading, pretrained  # noqa: E402

pytestmark = pytest.mark.slow  # conversions of real checkpoints, in processes of their own

# One layer, two query heads sharing one kv head, eight tokens: a few hundred floats.
D, F, N, K, H = 8, 16, 2, 1, 4
TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "\u2581", "a", "b", "\u2581a"]
_CONFIG = models.tiny(vocab_size=len(TOKENS), embed_dim=D, hidden_dim=F, num_heads=N, num_kv_heads=K, head_dim=H)
SHAPES = {  # GGUF name -> (HF name, [out, in] shape)
  "token_embd.weight": ("model.embed_tokens.weight", (len(TOKENS), D)),
  "output_norm.weight": ("model.norm.weight", (D,)),
}
for _path, (_gguf_name, _hf_name) in loading.LAYER_TENSORS.items():
  SHAPES[f"blk.0.{_gguf_name}"] = (f"model.layers.0.{_hf_name}", loading._expected_shape(_path, _CONFIG))


def tensors(seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {name: rng.normal(size=shape).astype(np.float32) for name, (_, shape) in SHAPES.items()}


def write_gguf(path, seed: int) -> None:
  """A Gemma 3 GGUF file with float32 tensors and a SentencePiece tokenizer."""
  writer = gguf.GGUFWriter(str(path), "gemma3")
  writer.add_embedding_length(D)
  writer.add_feed_forward_length(F)
  writer.add_block_count(1)
  writer.add_head_count(N)
  writer.add_head_count_kv(K)
  writer.add_key_length(H)
  writer.add_sliding_window(4)
  writer.add_tokenizer_model("llama")
  writer.add_token_list(TOKENS)
  writer.add_token_scores([0.0] * 4 + [-1.0] * 4)
  writer.add_token_types([3, 3, 3, 2, 1, 1, 1, 1])
  for name, w in tensors(seed).items():
    writer.add_tensor(name, w)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.fixture(scope="module")
def tokenizer_bytes(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "t.gguf"
  write_gguf(path, 0)
  return loading.gguf_sentencepiece(str(path))


def write_hf(directory, seed: int, tokenizer: bytes) -> None:
  """A Hugging Face Gemma 3 folder: config.json, model.safetensors and tokenizer.model."""
  os.makedirs(directory, exist_ok=True)
  config = {
    "model_type": "gemma3_text",
    "vocab_size": len(TOKENS),
    "hidden_size": D,
    "intermediate_size": F,
    "num_hidden_layers": 1,
    "num_attention_heads": N,
    "num_key_value_heads": K,
    "head_dim": H,
    "sliding_window": 4,
  }
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  weights = {SHAPES[name][0]: w for name, w in tensors(seed).items()}
  safetensors_numpy.save_file(weights, os.path.join(directory, "model.safetensors"))
  with open(os.path.join(directory, pretrained.TOKENIZER_FILE), "wb") as f:
    f.write(tokenizer)


def embedding(folder) -> np.ndarray:
  """The embedding table a converted folder holds, read back through `load`."""
  return np.asarray(pretrained.load(folder).params["embedder"]["embedding"])


def tree(root) -> list[str]:
  """Every path under root, to check that nothing was deleted."""
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, ds, fs in os.walk(root) for f in ds + fs)


@pytest.fixture
def cache(tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  cache.mkdir()
  (cache / "keep.txt").write_text("cache sentinel")
  monkeypatch.setenv("RLAIF_JAX_CACHE", str(cache))
  return cache


@pytest.mark.parametrize(
  "source, error, message",
  [
    (".", ValueError, r"'\.' is the folder .*work, which holds no model weights; expected a preset name"),
    ("..", ValueError, r"'\.\.' is the folder .*, which holds no model weights"),
    ("empty", ValueError, r"'empty' is the folder .*empty, which is empty; expected"),
    ("notes", ValueError, r"'notes' is the folder .*notes, which holds no model weights; .*\*\.safetensors"),
    ("missing.gguf", FileNotFoundError, r"'missing.gguf' is neither a file, a folder nor a preset .*nothing exists"),
    ("", ValueError, "pretrained source is empty"),
  ],
)
def test_sources_without_weights_are_refused_and_nothing_is_deleted(
  tmp_path, cache, monkeypatch, source, error, message
):
  work = tmp_path / "work"
  (work / "empty").mkdir(parents=True)
  (work / "notes").mkdir()
  (work / "notes" / "readme.txt").write_text("not a model")
  (work / "config.json").write_text("{}")  # a stray config is not weights
  (tmp_path / "parent_sentinel.txt").write_text("the folder above")
  monkeypatch.chdir(work)
  before = tree(tmp_path)
  with pytest.raises(error, match=message):
    pretrained.converted(source)
  assert tree(tmp_path) == before
  assert (cache / "keep.txt").read_text() == "cache sentinel"


def test_same_base_name_gets_its_own_entry_and_weights(tmp_path, cache, caplog):
  a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
  a.parent.mkdir()
  b.parent.mkdir()
  write_gguf(a, 1)
  write_gguf(b, 2)
  first, second = pretrained.converted(str(a)), pretrained.converted(str(b))
  assert first != second
  assert caplog.text.count("once into") == 2 and f"converting {a} once into {first} (about a minute" in caplog.text
  for entry in (first, second):
    assert os.path.dirname(entry) == str(cache) and os.path.basename(entry)[:6] == "model-"
    assert len(os.path.basename(entry)) == len("model-") + 12
  np.testing.assert_array_equal(embedding(first), tensors(1)["token_embd.weight"])
  np.testing.assert_array_equal(embedding(second), tensors(2)["token_embd.weight"])
  assert pretrained.converted(str(a)) == first  # converted once, announced once
  assert caplog.text.count("once into") == 2
  direct = pretrained.load(str(b)).params["embedder"]["embedding"]  # a GGUF file read without the cache
  np.testing.assert_array_equal(direct, tensors(2)["token_embd.weight"])


def test_hf_folders_with_the_same_name_and_a_rewritten_source(tmp_path, cache, tokenizer_bytes):
  a, b = tmp_path / "a" / "hf", tmp_path / "b" / "hf"
  write_hf(a, 3, tokenizer_bytes)
  write_hf(b, 4, tokenizer_bytes)
  first, second = pretrained.converted(str(a)), pretrained.converted(str(b))
  assert first != second and os.path.basename(first).startswith("hf-")
  np.testing.assert_array_equal(embedding(second), tensors(4)["token_embd.weight"])
  np.testing.assert_array_equal(
    pretrained.load(str(b)).params["embedder"]["embedding"], tensors(4)["token_embd.weight"]
  )
  write_hf(a, 5, tokenizer_bytes)  # new weights, new mtime: a new entry, the old one kept
  again = pretrained.converted(str(a))
  assert again not in (first, second) and os.path.isdir(first)
  np.testing.assert_array_equal(embedding(again), tensors(5)["token_embd.weight"])
  np.testing.assert_array_equal(embedding(first), tensors(3)["token_embd.weight"])


def test_touching_a_file_gives_a_new_entry(tmp_path, cache):
  path = tmp_path / "model.gguf"
  path.write_bytes(b"not read: cache_entry only looks at the path, size and mtime")
  first = pretrained.cache_entry(str(path))
  assert pretrained.cache_entry(str(path)) == first and os.path.basename(first).startswith("model-")
  os.utime(path, ns=(1, 1))
  touched = pretrained.cache_entry(str(path))
  path.write_bytes(b"longer, rewritten")
  os.utime(path, ns=(1, 1))  # same mtime, new size
  assert len({first, touched, pretrained.cache_entry(str(path))}) == 3


def test_presets_get_readable_entries(tmp_path, cache, monkeypatch, tokenizer_bytes):
  folder = tmp_path / "weights"
  write_hf(folder, 6, tokenizer_bytes)
  monkeypatch.setitem(pretrained.PRESETS, "tiny-preset", lambda: str(folder))
  entry = pretrained.converted("tiny-preset")
  assert os.path.basename(entry).startswith("tiny-preset-") and entry != pretrained.cache_entry(str(folder))
  np.testing.assert_array_equal(embedding(entry), tensors(6)["token_embd.weight"])


def dead_pid() -> int:
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def test_leftovers_of_killed_conversions_and_what_is_in_the_way(tmp_path, cache, tokenizer_bytes):
  source = tmp_path / "hf"
  write_hf(source, 7, tokenizer_bytes)
  host = pretrained._host()
  killed = cache / f".converting-{dead_pid()}-{host}-k1ll3d"  # ours, its process gone
  running = cache / f".converting-{os.getpid()}-{host}-runn1ng"  # ours, its process alive
  elsewhere = cache / f".converting-{dead_pid()}-another.host-0ther"  # cannot tell: kept
  old = cache / "hf"  # an unfinished entry named as before entries were keyed
  for folder in (killed, running, elsewhere, old):
    folder.mkdir()
    (folder / "checkpoints").mkdir()
  (tmp_path / "outside.txt").write_text("outside the cache")
  entry = pretrained.converted(str(source))
  np.testing.assert_array_equal(embedding(entry), tensors(7)["token_embd.weight"])
  assert not killed.exists() and running.exists() and elsewhere.exists() and old.exists()
  assert (tmp_path / "outside.txt").exists() and (cache / "keep.txt").exists()
  assert sorted(os.listdir(cache)) == sorted(["keep.txt", os.path.basename(entry), running.name, elsewhere.name, "hf"])

  # Something that is not a converted folder where the entry goes is named, not deleted.
  write_hf(source, 8, tokenizer_bytes)
  in_the_way = pretrained.cache_entry(str(source))
  os.makedirs(os.path.join(in_the_way, "checkpoints"))
  with pytest.raises(FileExistsError, match=f"{in_the_way} is in the way of converting .*no model_config.json"):
    pretrained.converted(str(source))
  assert os.listdir(in_the_way) == ["checkpoints"]

  # A conversion that fails leaves nothing behind.
  os.remove(source / pretrained.TOKENIZER_FILE)
  before = sorted(os.listdir(cache))
  with pytest.raises(FileNotFoundError, match="no tokenizer.model"):
    pretrained.converted(str(source))
  assert sorted(os.listdir(cache)) == before


def test_a_conversion_finished_meanwhile_by_another_process_wins(tmp_path, cache, monkeypatch, tokenizer_bytes):
  source = tmp_path / "hf"
  write_hf(source, 9, tokenizer_bytes)
  target = pretrained.cache_entry(str(source))
  convert = pretrained.convert

  def racing(path, out_dir):
    convert(path, target)  # the other process renames its complete folder into place first
    with open(os.path.join(target, "winner"), "w"):
      pass
    return convert(path, out_dir)

  monkeypatch.setattr(pretrained, "convert", racing)
  assert pretrained.converted(str(source)) == target
  assert os.path.exists(os.path.join(target, "winner"))  # theirs kept, ours discarded
  assert sorted(os.listdir(cache)) == sorted(["keep.txt", os.path.basename(target)])
  np.testing.assert_array_equal(embedding(target), tensors(9)["token_embd.weight"])
