"""Packed SFT rows (several examples to a row, segment ids): the packing itself, the attention
mask against a numpy reference, and the loss and gradients of a packed batch against the same
examples padded one to a row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlaif_jax import data, models, trainer
from rlaif_jax.models.layers import attention_mask
from rlaif_jax.sft import SFTObjective


def _examples(rng, n, vocab=200, longest=30):
  """Tokenized (inputs, targets) examples of random lengths, ids from 3 (0 pad, 1 EOS)."""
  out = []
  for _ in range(n):
    inputs = rng.integers(3, vocab, rng.integers(1, longest))
    targets = list(rng.integers(3, vocab, rng.integers(1, longest // 2))) + [1]
    out.append({"inputs": inputs, "targets": np.asarray(targets)})
  return out


def test_hand_packing_best_fit_longest_first():
  lengths = [5, 3, 4, 2]
  arrays = {"tokens": np.zeros((4, 8), np.int32), "input_mask": np.zeros((4, 8), bool)}
  arrays["loss_mask"] = np.zeros((4, 8), bool)
  for i, n in enumerate(lengths):
    arrays["tokens"][i, :n] = 10 * (i + 1) + np.arange(n)
    arrays["input_mask"][i, :n] = True
    arrays["loss_mask"][i, n - 1] = True
  packed, stats = data.pack_sft_features(arrays, pad_id=0)
  # 5 opens row 0 (3 left), 4 opens row 1 (4 left), 3 fills row 0, 2 goes to row 1
  assert packed["tokens"].tolist() == [[10, 11, 12, 13, 14, 20, 21, 22], [30, 31, 32, 33, 40, 41, 0, 0]]
  assert packed["segment_ids"].tolist() == [[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 2, 2, 0, 0]]
  positions = np.asarray(models.segment_positions(jnp.asarray(packed["segment_ids"])))
  assert np.where(packed["input_mask"], positions, 0).tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 1, 0, 0]]
  assert packed["loss_mask"].tolist() == [[0, 0, 0, 0, 1, 0, 0, 1], [0, 0, 0, 1, 0, 1, 0, 0]]
  assert stats == {"examples": 4, "rows": 2, "fill": 14 / 16}


def test_random_packing_keeps_every_example_once_and_in_one_piece():
  rng = np.random.default_rng(0)
  examples = _examples(rng, 60)
  arrays, _ = data.sft_features(examples, 48, pad_id=0)
  packed, stats = data.pack_sft_features(arrays, pad_id=0)
  lengths = arrays["input_mask"].sum(1)
  assert stats["rows"] >= -(-lengths.sum() // 48) and stats["rows"] < len(examples)
  assert stats["fill"] == pytest.approx(lengths.sum() / (stats["rows"] * 48), abs=1e-4)
  positions = np.asarray(models.segment_positions(jnp.asarray(packed["segment_ids"])))
  seen = []
  for row in range(stats["rows"]):
    segments = packed["segment_ids"][row]
    assert np.array_equal(packed["input_mask"][row], segments > 0)
    assert np.all(packed["tokens"][row][segments == 0] == 0)
    ids = [s for s in np.unique(segments) if s]
    assert ids == list(range(1, len(ids) + 1))
    for s in ids:
      where = np.flatnonzero(segments == s)
      assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
      assert np.array_equal(positions[row, where], np.arange(len(where)))
      seen.append((tuple(packed["tokens"][row, where]), tuple(packed["loss_mask"][row, where])))
  original = [
    (tuple(t[m]), tuple(lm[m])) for t, m, lm in zip(arrays["tokens"], arrays["input_mask"], arrays["loss_mask"])
  ]
  assert sorted(seen) == sorted(original)
  again, _ = data.pack_sft_features(arrays, pad_id=0)
  assert all(np.array_equal(again[k], packed[k]) for k in packed)  # a pure function of the rows
  with pytest.raises(ValueError, match="right-padded"):
    data.pack_sft_features({**arrays, "input_mask": arrays["input_mask"][:, ::-1]})


def test_segment_mask_and_positions_match_numpy():
  rng = np.random.default_rng(1)
  b, t, window = 3, 20, 5
  segments = np.sort(rng.integers(0, 4, (b, t)), axis=1)
  valid = segments > 0
  got = np.asarray(attention_mask(jnp.arange(t), jnp.arange(t), jnp.asarray(valid), window, jnp.asarray(segments)))
  q, k = np.arange(t)[:, None], np.arange(t)[None, :]
  want = (k <= q) & (k > q - window) & valid[:, None, :] & (segments[:, :, None] == segments[:, None, :])
  assert np.array_equal(got, want)
  positions = np.asarray(models.segment_positions(jnp.asarray(segments)))
  for row in range(b):
    for i in range(t):
      start = i
      while start > 0 and segments[row, start - 1] == segments[row, i]:
        start -= 1
      assert positions[row, i] == i - start


@pytest.mark.parametrize("config", [models.tiny, models.tiny_llama], ids=["gemma", "llama"])
def test_packed_batch_has_the_loss_and_gradients_of_the_same_examples_unpacked(config):
  """Rows long enough for several examples each, across tiny()'s 16-token local window."""
  rng = np.random.default_rng(2)
  examples = _examples(rng, 12, vocab=250, longest=24)
  arrays, _ = data.sft_features(examples, 64, pad_id=0)
  packed, stats = data.pack_sft_features(arrays, pad_id=0)
  assert stats["rows"] < len(examples) and packed["segment_ids"].max() >= 3
  model = models.Transformer(config(num_layers=2))
  params = models.init_params(model, jax.random.PRNGKey(0))
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
  objective = SFTObjective(model)
  grad = jax.jit(jax.value_and_grad(lambda p, b: objective.loss_fn(p, b, None)[0]))
  loss, grads = grad(params, {k: jnp.asarray(v) for k, v in arrays.items()})
  packed_loss, packed_grads = grad(params, {k: jnp.asarray(v) for k, v in packed.items()})
  np.testing.assert_allclose(packed_loss, loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(packed_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)
  # without the segment ids the examples would see each other: a different loss
  mixed = {k: jnp.asarray(v) for k, v in packed.items() if k != "segment_ids"}
  assert abs(float(grad(params, mixed)[0]) - float(loss)) > 1e-3
  # every token a target (a language-modelling loss, no prompt): an example's first token has no
  # target in its own row, and none in a packed row either (not the previous example's last)
  everything = {**arrays, "loss_mask": arrays["input_mask"]}
  packed_everything = {**packed, "loss_mask": packed["input_mask"]}
  np.testing.assert_allclose(grad(params, packed_everything)[0], grad(params, everything)[0], rtol=1e-5)


@pytest.mark.slow
def test_sft_stage_trains_on_packed_rows(tmp_path):
  import rlaif_jax.tasks  # noqa: F401  (registers tldr_sft)
  from rlaif_jax.stages.sft import run_sft

  source = models.ModelSource(config=models.tiny(num_layers=1))
  summary = run_sft(str(tmp_path / "sft"), source, max_len=1024, batch_size=8, num_steps=2, eval_split=None,
                    num_samples=0, pack=True, fit=trainer.FitConfig(tensorboard=False))  # fmt: skip
  assert summary["steps"] == 2 and summary["train_rows"] < summary["train_examples"]
  unpacked, _ = data.sft_features(data.task_examples("tldr_sft", "train"), 1024)
  assert summary["train_fill"] > unpacked["input_mask"].mean()


@pytest.mark.slow
def test_packed_step_on_a_mesh_equals_one_device():
  """The segment ids are split over the batch like the tokens: a packed step on a
  data x fsdp x tensor mesh has one device's loss and gradient norm."""
  from sft_helpers import comparable_optimizer, make_trainer, one_device_mesh

  from rlaif_jax import partitioning

  rng = np.random.default_rng(3)
  arrays, _ = data.sft_features(_examples(rng, 40, vocab=250, longest=24), 64, pad_id=0)
  packed, _ = data.pack_sft_features(arrays, pad_id=0)
  batch = {k: v[:8] for k, v in packed.items()}
  got = []
  for mesh in (one_device_mesh(), partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})):
    t = make_trainer(mesh, optimizer=comparable_optimizer())
    _, metrics = t.step(t.init_state(jax.random.PRNGKey(0)), batch, jax.random.PRNGKey(0))
    got.append([float(metrics["loss"]), float(metrics["grad_norm"])])
  np.testing.assert_allclose(got[1], got[0], rtol=1e-5)
