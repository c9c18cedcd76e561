import json

import jax
import numpy as np
import pytest
from numpy_gemma import forward as numpy_forward
from sft_helpers import comparable_optimizer, one_device_mesh, to_numpy

from rlaif_jax import data, losses, models, optimizers, partitioning, rrhf, scorers, trainer
from rlaif_jax.stages import rrhf as stage

VOCAB = data.byte_vocabulary()
EXAMPLES = [
  {"inputs": "Q1:", "responses": ["alpha", "beta"], "human_scores": [1.0, 0.0]},
  {"inputs": "Q2:", "responses": ["gamma"], "human_scores": [1.0]},
  {"inputs": "Q3:", "responses": [], "human_scores": None},
]


def _length_scorer(inputs, responses):
  return np.asarray([len(r) for r in responses], np.float32)


@pytest.fixture(scope="module")
def policy():
  model = models.Transformer(models.tiny(num_layers=2))
  return model, models.init_params(model, jax.random.PRNGKey(0))


def test_collect_aligns_sources_scores_and_valid(policy):
  model, params = policy
  sources = rrhf.Sources(policy_temperatures=(1.0, 0.5), dataset=True, max_new_tokens=6)
  arrays, info = rrhf.collect(model, params, VOCAB, EXAMPLES, sources, _length_scorer, 32, seed=0)
  assert info["sources"] == ["policy_t1.0", "policy_t0.5", "dataset0", "dataset1"]
  np.testing.assert_array_equal(arrays["valid"], [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]])
  for i in range(3):
    for j, column in enumerate(info["texts"]):
      if column[i] is not None:
        assert arrays["scores"][i, j] == len(column[i])  # each score belongs to its text
        row = arrays["tokens"][i, j][arrays["response_mask"][i, j]]
        assert VOCAB.decode([int(t) for t in row if t != VOCAB.eos_id]) == column[i]
  assert info["policy_score"] == pytest.approx(arrays["scores"][:, :2].mean())
  assert info["dataset_score"] == pytest.approx(np.mean([len(r) for e in EXAMPLES for r in e["responses"]]))


def test_collect_on_prompts_alone_has_no_dataset_score(policy, recwarn):
  """A prompts file gives no dataset responses: the dataset's score is None (was NaN, with numpy's
  'mean of empty slice' warning), and the policy's samples are still collected and scored."""
  model, params = policy
  prompts_only = [{"inputs": f"Q{i}:", "responses": [], "human_scores": None} for i in range(3)]
  sources = rrhf.Sources(policy_temperatures=(1.0, 0.5), dataset=True, max_new_tokens=4)
  arrays, info = rrhf.collect(model, params, VOCAB, prompts_only, sources, _length_scorer, 32, seed=0)
  assert info["dataset_score"] is None and info["policy_score"] is not None
  assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_objective_equals_per_response_computation(policy):
  model, params = policy
  arrays, _ = rrhf.collect(
    model, params, VOCAB, EXAMPLES, rrhf.Sources((1.0,), dataset=True, max_new_tokens=5), _length_scorer, 32, seed=1
  )
  loss, metrics = rrhf.RRHFObjective(model, sft_weight=0.5).loss_fn(params, arrays, None)
  b, k, _ = arrays["tokens"].shape
  seq = np.zeros((b, k))
  tok = np.zeros((b, k, arrays["tokens"].shape[-1] - 1))
  for i in range(b):
    for j in range(k):
      n = int(arrays["input_mask"][i, j].sum())
      if n == 0:
        continue
      logits, _ = numpy_forward(params, model.config, arrays["tokens"][i, j, : n - 1])  # real tokens only
      logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
      )
      targets = arrays["tokens"][i, j, 1:n]
      m = arrays["response_mask"][i, j, 1:n]
      picked = logp[np.arange(n - 1), targets] * m
      tok[i, j, : n - 1] = picked
      seq[i, j] = picked.sum() / max(m.sum(), 1)
  rank = float(losses.rrhf_rank_loss(seq, arrays["scores"], arrays["valid"]))
  best = np.argmax(np.where(arrays["valid"], arrays["scores"], -np.inf), 1)
  sft = -np.mean([tok[i, best[i]].sum() for i in range(b)])
  assert float(metrics["rank_loss"]) == pytest.approx(rank, rel=1e-4, abs=1e-5)
  assert float(metrics["sft_loss"]) == pytest.approx(sft, rel=1e-4)
  assert float(loss) == pytest.approx(rank + 0.5 * sft, rel=1e-4)


@pytest.mark.parametrize(
  "shape", [{"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}], ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items())
)
@pytest.mark.slow
def test_rrhf_step_sharded_equals_one_device(shape, policy):
  model, params = policy
  examples = [{"inputs": f"Q{i}:", "responses": [f"r{i}", f"resp {i}"], "human_scores": None} for i in range(8)]
  arrays, _ = rrhf.collect(
    model, params, VOCAB, examples, rrhf.Sources((1.0,), dataset=True, max_new_tokens=5), _length_scorer, 32, seed=2
  )
  results = []
  for mesh in (one_device_mesh(), partitioning.make_mesh(shape)):
    t = trainer.Trainer(
      rrhf.RRHFObjective(model).loss_fn,
      lambda r: models.init_params(model, r, boxed=True),
      comparable_optimizer(),
      mesh,
    )
    state = t.init_state(jax.random.PRNGKey(0))
    state, m = t.step(state, arrays, jax.random.PRNGKey(0))
    results.append((float(m["loss"]), to_numpy(state.params)))
  assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), results[0][1], results[1][1]
  )


def test_human_scorer_scores_only_ranked_dataset_responses():
  source = models.ModelSource(config=models.tiny(num_layers=1))
  context = scorers.ScoringContext(one_device_mesh(), 32, source, EXAMPLES, "run_rrhf")
  score = scorers.prepare(scorers.HumanScorer(), context)
  np.testing.assert_array_equal(score(["Q1:", "Q1:"], ["alpha", "beta"]), [1.0, 0.0])
  with pytest.raises(ValueError, match="policy_temperatures=\\(\\)"):
    score(["Q1:"], ["something sampled"])
  with pytest.raises(ValueError, match="run_rrhf: RewardModelScorer.workdir is not set"):
    scorers.prepare(scorers.RewardModelScorer(), context)


@pytest.mark.slow
def test_online_rrhf_raises_ordering_and_the_policys_own_score(tmp_path):
  """Toy preference: more 'a's, shorter. Fixed seed; 4 rounds of sampling and training."""
  score = lambda inputs, responses: np.asarray([r.count("a") - 0.1 * len(r) for r in responses], np.float32)  # noqa: E731
  run = lambda: stage.run_rrhf(  # noqa: E731
    str(tmp_path),
    models.ModelSource(config=models.tiny(num_layers=2)),
    score,
    task="prompts",
    split="train",
    sources=rrhf.Sources(policy_temperatures=(1.0, 1.0, 1.0, 1.0), dataset=False, max_new_tokens=12),
    max_len=64,
    batch_size=8,
    num_steps=40,
    resample_every=10,
    optimizer=optimizers.adamw(3e-3),
    log_every=5,
    tensorboard=False,
  )
  summary = run()
  history = summary["history"]
  assert len(history) == 4
  assert history[0]["ordering_after"] > history[0]["ordering_before"] + 0.3  # learns the round's ranking
  assert history[-1]["ordering_before"] > history[0]["ordering_before"] + 0.1  # and ranks new samples better
  assert summary["policy_score_final"] > summary["policy_score_first_round"] + 0.4
  assert (tmp_path / "curves.png").exists()
  # Rerunning a finished run trains nothing more: same final params, so the same final score.
  again = run()
  assert again["history"] == [] and again["policy_score_final"] == summary["policy_score_final"]


@pytest.mark.slow
def test_rrhf_resumes_from_the_last_good_round_and_logs_each_metric_once(tmp_path, caplog):
  """A corrupt last checkpoint (a round boundary) is skipped: the stage resumes at the round
  before it, and the metrics it logs again are not repeated."""
  from test_checkpoints import _flip_bytes, _largest_file

  from rlaif_jax.checkpoints import Checkpointer

  score = lambda inputs, responses: np.asarray([r.count("a") - 0.1 * len(r) for r in responses], np.float32)  # noqa: E731
  run = lambda steps: stage.run_rrhf(  # noqa: E731
    str(tmp_path), models.ModelSource(config=models.tiny(num_layers=1)), score, task="prompts", split="train",
    limit=4, sources=rrhf.Sources(policy_temperatures=(1.0, 1.0), dataset=False, max_new_tokens=4), max_len=48,
    batch_size=4, num_steps=steps, resample_every=2, optimizer=optimizers.adamw(3e-3), log_every=1,
    tensorboard=False, mesh_shape={"data": 1},
  )  # fmt: skip
  straight = run(4)
  metrics = tmp_path / "metrics.jsonl"
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [2, 4]
  _flip_bytes(_largest_file(str(tmp_path / "checkpoints" / "4")))
  again = run(4)  # resumes at step 2: round 2 again
  assert "checkpoints/4 is corrupt" in caplog.text
  assert again["policy_score_final"] == pytest.approx(straight["policy_score_final"], abs=1e-5)
  rows_again = [json.loads(line) for line in metrics.read_text().splitlines()]
  logged = [(r["step"], k) for r in rows_again for k in r if k != "step"]
  assert len(logged) == len(set(logged))  # each metric of each step once
  assert {x for r in rows for x in r.items() if x[0] == "step"} == {
    x for r in rows_again for x in r.items() if x[0] == "step"
  }
