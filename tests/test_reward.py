import functools
import json
import random

import jax
import numpy as np
import pytest
from conftest import randomize
from numpy_gemma import forward as numpy_forward
from scipy import stats as sps
from sft_helpers import comparable_optimizer, one_device_mesh, to_numpy

from rlaif_jax import data, models, optimizers, partitioning, reward, trainer
from rlaif_jax.stages import rm as rm_stage

VOCAB = data.byte_vocabulary()


def _marker_pairs(n, seed):
  """Pairs whose soft label follows the difference in GOOD markers: p_a = sigmoid(1.5 (c_a - c_b))."""
  rng = random.Random(seed)
  word = lambda: "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 6)))  # noqa: E731
  pairs, labels = [], []
  for i in range(n):
    counts = rng.choice([(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)])
    texts = [" ".join([word()] + ["GOOD"] * c + [word()]) for c in counts]
    p = 1 / (1 + np.exp(-1.5 * (counts[0] - counts[1])))
    pairs.append(
      {
        "id": f"m{seed}-{i}",
        "inputs": f"Q{i % 5}:",
        "response_a": texts[0],
        "response_b": texts[1],
        "human_choice": 0 if p > 0.5 else 1,
      }
    )
    labels.append(p)
  return pairs, labels


def _rm_trainer(mesh, lr=3e-3, optimizer=None):
  model = models.Transformer(models.tiny(num_layers=2), scalar_head=True)
  t = trainer.Trainer(
    reward.RewardObjective(model).loss_fn,
    functools.partial(models.init_params, model, boxed=True),
    optimizer or optimizers.adamw(lr, weight_decay=0.0),
    mesh,
  )
  return model, t


@pytest.mark.slow
def test_tiny_rm_learns_a_soft_preference_and_is_calibrated():
  train_pairs, train_labels = _marker_pairs(512, seed=0)
  test_pairs, test_labels = _marker_pairs(128, seed=1)
  arrays, _ = reward.pair_arrays(train_pairs, train_labels, VOCAB, 48)
  mesh = partitioning.make_mesh({"data": -1})
  model, t = _rm_trainer(mesh)
  rng = jax.random.PRNGKey(0)
  state = t.init_state(rng)
  batches = data.ArrayDataset(arrays, 32, seed=0)
  for step in range(250):
    state, metrics = t.step(state, batches.batch(step), rng)
  test_arrays, _ = reward.pair_arrays(test_pairs, test_labels, VOCAB, 48)
  r = np.asarray(reward.pair_rewards(model, state.params, test_arrays["tokens"], test_arrays["input_mask"]))
  prob_a = 1 / (1 + np.exp(-(r[:, 0] - r[:, 1])))
  labels = np.asarray(test_labels)
  accuracy = np.mean((prob_a > 0.5) == (labels > 0.5))
  assert accuracy > 0.95, accuracy
  # The soft labels take three confidence levels; the RM's probabilities track them.
  assert np.mean(np.abs(prob_a - labels)) < 0.08, np.mean(np.abs(prob_a - labels))
  for level in np.unique(np.round(np.maximum(labels, 1 - labels), 3)):
    sel = np.isclose(np.maximum(labels, 1 - labels), level, atol=1e-3)
    assert abs(np.mean(np.maximum(prob_a[sel], 1 - prob_a[sel])) - level) < 0.08


def test_rm_loss_reads_the_last_real_token_of_each_response():
  model = models.Transformer(models.tiny(num_layers=1), scalar_head=True)
  params = models.init_params(model, jax.random.PRNGKey(0))
  params["score_kernel"] = jax.random.normal(jax.random.PRNGKey(1), params["score_kernel"].shape)
  pairs, labels = _marker_pairs(4, seed=3)
  arrays, _ = reward.pair_arrays(pairs, labels, VOCAB, 40)
  r = np.asarray(reward.pair_rewards(model, params, arrays["tokens"], arrays["input_mask"]))
  for i in range(4):
    for j in range(2):
      n = int(arrays["input_mask"][i, j].sum())
      assert arrays["tokens"][i, j, n - 1] == VOCAB.eos_id
      _, hidden = numpy_forward(params, model.config, arrays["tokens"][i, j, :n])  # real tokens only
      expected = hidden[-1] @ np.asarray(params["score_kernel"], np.float64) + float(params["score_bias"])
      assert r[i, j] == pytest.approx(expected, abs=1e-4)
  loss, metrics = reward.RewardObjective(model).loss_fn(params, arrays, None)
  margin = r[:, 0] - r[:, 1]
  p = np.asarray(labels)
  expected = -np.mean(p * -np.logaddexp(0, -margin) + (1 - p) * -np.logaddexp(0, margin))
  assert float(loss) == pytest.approx(expected, rel=1e-4)
  assert float(metrics["accuracy"]) == pytest.approx(np.mean((margin > 0) == (p > 0.5)))


@pytest.mark.parametrize("chat_format", [None, "chatml"])
def test_a_response_scores_the_same_in_a_training_pair_and_when_rl_scores_it(chat_format):
  """With contexts longer than max_len, a reward model's training pair (pair_arrays) and RL's
  scoring (RewardScorer.score) cut one (context, response) alike, so it gets one score; the
  pairs' two responses differ in length, which once cut the pair's context to fit the longer."""
  vocab = data.with_chat(VOCAB, chat_format)
  model = models.Transformer(models.tiny(num_layers=1), scalar_head=True)
  params = randomize(models.init_params(model, jax.random.PRNGKey(0)))
  scorer = reward.RewardScorer(model, params, vocab, max_len=128, batch_size=4, mesh=one_device_mesh())
  rng = random.Random(0)
  words = lambda n: " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(n))  # noqa: E731
  pairs = [
    {"id": str(i), "inputs": f"\n\nHuman: {words(40)}\n\nAssistant:", "response_a": " " + words(2),
     "response_b": " " + words(9), "human_choice": 0}
    for i in range(4)
  ]  # fmt: skip
  arrays, stats = reward.pair_arrays(pairs, [0.5] * 4, vocab, 128)
  assert stats["truncated_inputs"] == 4 and stats["truncated_responses"] == 0
  from_pairs = scorer.score_tokens(arrays["tokens"].reshape(8, 128), arrays["input_mask"].reshape(8, 128))
  inputs = [p["inputs"] for p in pairs for _ in range(2)]
  scored = scorer.score(inputs, [p[k] for p in pairs for k in ("response_a", "response_b")])
  np.testing.assert_allclose(from_pairs, scored, rtol=1e-5, atol=1e-6)
  assert np.ptp(scored) > 1e-3  # the scores tell rows apart: the check could fail


@pytest.mark.parametrize(
  "shape",
  [{"data": 8}, {"fsdp": 8}, {"data": 2, "fsdp": 2, "tensor": 2}],
  ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()),
)
@pytest.mark.slow
def test_rm_step_sharded_equals_one_device(shape):
  pairs, labels = _marker_pairs(16, seed=4)
  arrays, _ = reward.pair_arrays(pairs, labels, VOCAB, 40)
  results = []
  for mesh in (one_device_mesh(), partitioning.make_mesh(shape)):
    _, t = _rm_trainer(mesh, optimizer=comparable_optimizer())
    rng = jax.random.PRNGKey(0)
    state = t.init_state(rng)
    state, metrics = t.step(state, arrays, rng)
    results.append((float(metrics["loss"]), to_numpy(state.params)))
  assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), results[0][1], results[1][1]
  )


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


@pytest.mark.parametrize("bad, message", [(1.5, "got 1.5"), (float("nan"), "got nan"), ("0.3", "got '0.3'")])
def test_bad_ai_labels_are_rejected_naming_file_and_line(tmp_path, bad, message):
  path = tmp_path / "labels.jsonl"
  path.write_text(json.dumps({"id": "a", "p_a": 0.2}) + "\n" + json.dumps({"id": "b", "p_a": bad}) + "\n")
  with pytest.raises(
    data.DataError, match=rf"labels.jsonl:2: field 'p_a': expected a probability in \[0, 1\], {message}"
  ):
    reward.read_ai_labels(str(path))


def test_label_sources():
  pairs = [{"id": "a", "human_choice": 0}, {"id": "b", "human_choice": -1}, {"id": "c", "human_choice": 1}]
  rows, labels = reward.labeled_examples(pairs, "human", None)
  assert [r["id"] for r in rows] == ["a", "c"] and labels == [1.0, 0.0]
  rows, labels = reward.labeled_examples(pairs, "ai", {"b": 0.3, "c": 0.9})
  assert [r["id"] for r in rows] == ["b", "c"] and labels == [0.3, 0.9]
  rows, labels = reward.labeled_examples(pairs, "mixture", {"a": 0.6})
  assert [r["id"] for r in rows] == ["a", "a", "c"] and labels == [1.0, 0.6, 0.0]
  with pytest.raises(ValueError, match="needs run_rm.ai_labels"):
    reward.labeled_examples(pairs, "ai", None)


@pytest.mark.slow
def test_rm_stage_checkpoint_round_trip_and_sft_init(tmp_path):
  """AI-labeled training from an SFT checkpoint; the saved RM scores exactly as in memory."""
  sft_model = models.Transformer(models.tiny(num_layers=2))
  sft_params = models.init_params(sft_model, jax.random.PRNGKey(5))
  from rlaif_jax.checkpoints import Checkpointer
  from rlaif_jax.trainer import TrainState

  ckpt = Checkpointer(str(tmp_path / "sft" / "checkpoints"))
  ckpt.save(1, TrainState(step=np.int32(1), params=sft_params, opt_state={}), force=True)
  ckpt.close()
  pairs, labels = _marker_pairs(40, seed=6)
  cands = _write(
    tmp_path / "pairs.jsonl",
    [
      {
        "id": p["id"],
        "input": p["inputs"],
        "response_a": p["response_a"],
        "response_b": p["response_b"],
        "human_choice": p["human_choice"],
      }
      for p in pairs
    ],
  )
  ai = _write(tmp_path / "labels.jsonl", [{"id": p["id"], "p_a": lab} for p, lab in zip(pairs, labels)])
  summary = rm_stage.run_rm(
    str(tmp_path / "rm"),
    models.ModelSource(config=models.tiny(num_layers=2), checkpoint=str(tmp_path / "sft" / "checkpoints")),
    task=None,
    candidates_file=cands,
    eval_split=None,
    eval_fraction=0.25,
    label_source="ai",
    ai_labels=ai,
    max_len=48,
    batch_size=8,
    num_steps=4,
    fit=trainer.FitConfig(checkpoint_every=2, eval_every=2, log_every=2, tensorboard=False),
  )
  assert summary["train_pairs"] == 30 and summary["eval_pairs"] == 10
  assert {"eval_accuracy_human", "eval_accuracy_ai", "eval_mean_abs_error_ai"} <= set(summary)
  for name in ("report.md", "report.json", "curves.png", "calibration.png", reward.STATS_FILE):
    assert (tmp_path / "rm" / name).exists()
  scorer = reward.RewardScorer.from_workdir(
    str(tmp_path / "rm"), models.ModelSource(config=models.tiny(num_layers=2)), max_len=48, batch_size=8
  )
  inputs, responses = [p["inputs"] for p in pairs[:5]], [p["response_a"] for p in pairs[:5]]
  from_disk = scorer.score(inputs, responses)
  rm_model = models.Transformer(models.tiny(num_layers=2), scalar_head=True)
  in_memory = reward.RewardScorer(rm_model, jax.device_get(scorer.params), VOCAB, max_len=48, batch_size=8)
  np.testing.assert_array_equal(from_disk, in_memory.score(inputs, responses))
  normalized = scorer.score(inputs, responses, normalize=True)
  stats = scorer.stats
  np.testing.assert_allclose(normalized, (from_disk - stats["mean"]) / stats["std"], rtol=1e-6)
  # The decoder started from the SFT checkpoint; only training moved it.
  trained = jax.device_get(scorer.params)
  assert set(trained) == set(sft_params) | {"score_kernel", "score_bias"}


@pytest.mark.slow
def test_rm_stage_holds_out_ai_labeled_pairs_beside_the_human_eval_split(tmp_path):
  """Distillation accuracy (vs AI) on held-out AI-labeled candidates, accuracy vs human on the task's split."""
  pairs, labels = _marker_pairs(20, seed=7)
  rows = [
    {"id": p["id"], "input": p["inputs"], "response_a": p["response_a"], "response_b": p["response_b"]} for p in pairs
  ]
  cands = _write(tmp_path / "pairs.jsonl", rows)
  ai = _write(tmp_path / "labels.jsonl", [{"id": p["id"], "p_a": lab} for p, lab in zip(pairs, labels)])
  summary = rm_stage.run_rm(
    str(tmp_path / "rm"),
    models.ModelSource(config=models.tiny(num_layers=1)),
    task="tldr_comparisons",
    eval_split="validation",
    candidates_file=cands,
    label_source="ai",
    ai_labels=ai,
    ai_eval_fraction=0.25,
    max_len=64,
    batch_size=8,
    num_steps=2,
    fit=trainer.FitConfig(eval_every=2, log_every=2, tensorboard=False),
  )
  assert summary["train_pairs"] == 15 and summary["eval_pairs"] == 12 + 5  # the task's 12 + 5 held-out candidates
  assert {"eval_accuracy_human", "eval_accuracy_ai"} <= set(summary)
  # each accuracy is a share of a count of pairs, with scipy's Wilson interval of that share
  humans = sum(p["human_choice"] in (0, 1) for p in data.load_pairs("tldr_comparisons", "validation", None))
  assert (summary["eval_pairs_human"], summary["eval_pairs_ai"]) == (humans, 5)
  for kind, n in (("human", humans), ("ai", 5)):
    k = summary[f"eval_accuracy_{kind}"] * n
    assert k == pytest.approx(round(k))
    ci = sps.binomtest(round(k), n).proportion_ci(method="wilson")
    np.testing.assert_allclose(summary[f"eval_accuracy_{kind}_interval"], [ci.low, ci.high], atol=1e-12)
  md = (tmp_path / "rm" / "report.md").read_text()
  low, high = summary["eval_accuracy_ai_interval"]
  assert f"| eval_accuracy_ai | {summary['eval_accuracy_ai']:.3f} [{low:.3f}, {high:.3f}] |" in md
  definitions = md.split("\n## Definitions\n", 1)[1]
  assert "\n- accuracy vs AI (`eval_accuracy_ai`, distillation accuracy): share of the held-out pairs" in definitions
  assert "\n- accuracy vs human (`eval_accuracy_human`)" in definitions and "\n- [low, high]: " in definitions
  with pytest.raises(ValueError, match=r"run_rm.eval_split='test' names a split of run_rm.task, which is None"):
    rm_stage.run_rm(str(tmp_path / "rm3"), models.ModelSource(config=models.tiny(num_layers=1)), task=None,
                    candidates_file=cands)  # fmt: skip
  with pytest.raises(ValueError, match="ai_eval_fraction > 0 needs run_rm.ai_labels"):
    rm_stage.run_rm(
      str(tmp_path / "rm2"),
      models.ModelSource(config=models.tiny(num_layers=1)),
      task="tldr_comparisons",
      eval_split="validation",
      candidates_file=cands,
      ai_eval_fraction=0.25,
    )


@pytest.mark.parametrize("eval_fraction, held_out", [(0.17, 2), (0.0, 0)])
def test_rm_stage_on_few_pairs_evaluates_what_it_holds_out_and_always_writes_reward_stats(
  tmp_path, caplog, eval_fraction, held_out
):
  """12 pairs: 2 held out (fewer than a batch) are evaluated, not skipped; none held out says so
  loudly and the reward statistics RL needs come from the training pairs. The report lists only
  plots that exist."""
  pairs, labels = _marker_pairs(12, seed=3)
  rows = [
    {"id": p["id"], "input": p["inputs"], "response_a": p["response_a"], "response_b": p["response_b"],
     "human_choice": 0 if lab > 0.5 else 1}
    for p, lab in zip(pairs, labels)
  ]  # fmt: skip
  workdir = tmp_path / "rm"
  summary = rm_stage.run_rm(
    str(workdir), models.ModelSource(config=models.tiny(num_layers=1)), task=None, eval_split=None,
    candidates_file=_write(tmp_path / "pairs.jsonl", rows), eval_fraction=eval_fraction, max_len=64, batch_size=8,
    num_steps=2, fit=trainer.FitConfig(eval_every=2, log_every=2, tensorboard=False), mesh_shape={"data": 1},
  )  # fmt: skip
  assert summary["eval_pairs"] == held_out
  assert (workdir / reward.STATS_FILE).exists() and set(summary["reward_stats"]) >= {"mean", "std"}
  plots = (workdir / "report.md").read_text().rsplit("Plots: ", 1)[1].split("\n")[0].split()
  assert all((workdir / p.strip(",")).exists() for p in plots)
  if held_out:
    assert 0.0 <= summary["eval_accuracy_human"] <= 1.0 and (workdir / "calibration.png").exists()
  else:
    assert "eval_accuracy_human" not in summary and not (workdir / "calibration.png").exists()
    assert "run_rm: no held-out pairs" in caplog.text
