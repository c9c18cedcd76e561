"""DPO and IPO on soft AI labels (the dpo stage) and online AI feedback (rl.OnlineDpo with
scorers.PairwiseScorer): the shared preference loss against numpy, sequence log-probabilities
against a numpy pass over the model's logits, the estimator's passes, the rollout loop keeping a
prompt's responses together, and each method learning a toy preference."""

import json

import jax
import numpy as np
import pytest
from test_estimators import model_batch
from test_reward import _marker_pairs
from test_rl import lowercase_fraction, tiny_model, tiny_source

from rlaif_jax import data, dpo, losses, models, optimizers, reward, rl, sampling, scorers, trainer
from rlaif_jax.checkpoints import Checkpointer
from rlaif_jax.stages.dpo import run_dpo
from rlaif_jax.stages.rl import run_rl

VOCAB = data.byte_vocabulary()


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def np_preference(kind, logp, ref, p, beta):
  """The loss and metrics of losses.preference_loss, one pair at a time in float64."""
  terms, correct, decided, margins = [], 0, 0, []
  for (la, lb), (ra, rb), pa in zip(logp.astype(np.float64), ref.astype(np.float64), p.astype(np.float64)):
    h = (la - ra) - (lb - rb)
    if kind == "dpo":
      terms.append(-(pa * np_log_sigmoid(beta * h) + (1 - pa) * np_log_sigmoid(-beta * h)))
    else:
      terms.append((h - (2 * pa - 1) / (2 * beta)) ** 2)
    if pa != 0.5:
      decided += 1
      correct += (beta * h > 0) == (pa > 0.5)
    margins.append(beta * h if pa >= 0.5 else -beta * h)
  ratio = (logp.astype(np.float64) - ref).mean()
  return np.mean(terms), {"accuracy": correct / max(decided, 1), "margin": np.mean(margins), "log_ratio": ratio}


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preference_loss_against_numpy(kind, seed):
  """Random log-probs; labels hard (0, 1), soft, and exactly 0.5 (no preference: not counted)."""
  rng = np.random.default_rng(seed)
  b = 9
  logp, ref = (-np.abs(rng.normal(size=(b, 2)) * 20).astype(np.float32) for _ in range(2))
  p = rng.uniform(size=b).astype(np.float32)
  p[:3] = [0.0, 1.0, 0.5]
  beta = float(rng.uniform(0.05, 1.0))
  loss, metrics = jax.jit(losses.preference_loss, static_argnums=0)(kind, logp, ref, p, beta)
  want_loss, want = np_preference(kind, logp, ref, p, beta)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-4, atol=1e-5)
  for key, value in want.items():
    np.testing.assert_allclose(float(metrics[key]), value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_preference_loss_edge_cases():
  """p = 0.5 everywhere: DPO's loss is log 2 at h = 0 and nothing is counted; one pair; an
  unknown loss names itself."""
  z = np.zeros((3, 2), np.float32)
  loss, metrics = losses.preference_loss("dpo", z, z, np.full(3, 0.5, np.float32), 0.1)
  assert float(loss) == pytest.approx(np.log(2)) and float(metrics["accuracy"]) == 0.0
  one = np.array([[-3.0, -5.0]], np.float32)
  loss, metrics = losses.preference_loss("ipo", one, z[:1], np.ones(1, np.float32), 0.5)
  assert float(loss) == pytest.approx((2.0 - 1.0) ** 2) and float(metrics["accuracy"]) == 1.0
  with pytest.raises(ValueError, match="'kto'"):
    losses.preference_loss("kto", one, one, np.ones(1, np.float32), 0.1)


def _pairs(n, seed):
  """The reward tests' marker pairs (soft label sigmoid(1.5 (GOOD markers of A - of B)))."""
  return _marker_pairs(n, seed)


def np_sequence_logprob(model, params, tokens, input_mask, response_mask):
  """sum over response tokens of log softmax(logits)[next token], from the model's logits in numpy."""
  logits = np.asarray(model.apply({"params": params}, tokens, input_mask), np.float64)
  logits -= logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  out = np.zeros(tokens.shape[0])
  for i in range(tokens.shape[0]):
    for t in np.flatnonzero(response_mask[i]):
      out[i] += logp[i, t - 1, tokens[i, t]]
  return out


def test_dpo_objective_reads_each_responses_sequence_logprob():
  """pair_logprobs equals a numpy pass over the logits (response tokens, EOS included; context and
  padding not), and the objective's loss is the soft DPO loss of those numbers."""
  model = tiny_model()
  pairs, labels = _pairs(4, seed=3)
  arrays, _ = reward.pair_arrays(pairs, labels, VOCAB, 40)
  policy, ref = (models.init_params(model, jax.random.PRNGKey(s)) for s in (0, 1))
  got = np.asarray(jax.jit(dpo.pair_logprobs, static_argnums=0)(model, policy, *(arrays[k] for k in KEYS)))
  flat = {k: arrays[k].reshape(8, 40) for k in KEYS}
  want = np_sequence_logprob(model, policy, *(flat[k] for k in KEYS)).reshape(4, 2)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
  ref_logp = np_sequence_logprob(model, ref, *(flat[k] for k in KEYS)).reshape(4, 2)
  batch = arrays | {"ref_logp": ref_logp.astype(np.float32)}
  loss, metrics = jax.jit(dpo.DpoObjective(model, 0.3).loss_fn)(policy, batch, None)
  want_loss, _ = np_preference("dpo", want, ref_logp, np.asarray(labels), 0.3)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-4)
  assert float(metrics["weight"]) == 4
  with pytest.raises(ValueError, match="beta=0"):
    dpo.DpoObjective(model, 0.0)


KEYS = ("tokens", "input_mask", "response_mask")


def test_online_dpo_targets_and_loss_on_a_tiny_model():
  """Rows 2i and 2i + 1 are a pair; the scorer's p_a (row 2i) is its label; the loss is the soft
  DPO loss of the pairs' summed log-probs, mean over pairs."""
  model, p = tiny_model(), 6
  est = rl.OnlineDpo.build(model, p, beta=0.2)
  ref = models.init_params(model, jax.random.PRNGKey(0))
  params = est.initial_params(models.init_params(model, jax.random.PRNGKey(1)), None)
  batch = model_batch(k=2, groups=2)
  batch["reward"] = np.array([0.8, 0.2, 0.3, 0.7], np.float32)
  targets, metrics = jax.jit(est.targets)(params, ref, batch, np.float32(0.1))
  mask = batch["response_mask"].astype(np.float64)
  logp, _ = rl.policy_token_stats(model, params[rl.POLICY], batch["tokens"], batch["input_mask"], p)
  ref_logp, _ = rl.policy_token_stats(model, ref, batch["tokens"], batch["input_mask"], p)
  seq, ref_seq = ((np.asarray(x, np.float64) * mask).sum(-1) for x in (logp, ref_logp))
  np.testing.assert_allclose(np.asarray(targets["ref_sequence_logp"]), ref_seq, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(targets["p_a"]), [0.8, 0.8, 0.3, 0.3])
  assert float(metrics["label_confidence"]) == pytest.approx(np.mean([0.6, 0.4]))
  batch |= {k: np.asarray(v) for k, v in targets.items()}
  loss, step = jax.jit(est.loss_fn)(params, batch, None)
  want, want_metrics = np_preference("dpo", seq.reshape(2, 2), ref_seq.reshape(2, 2), np.array([0.8, 0.3]), 0.2)
  np.testing.assert_allclose(float(loss), want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(float(step["accuracy"]), want_metrics["accuracy"])
  assert float(step["weight"]) == 2 and abs(float(step["kl_to_rollout_policy"])) < 1e-5


def test_online_dpo_refuses_reward_shaping():
  with pytest.raises(ValueError, match="reward_normalization='none'"):
    rl.OnlineDpo.build(tiny_model(), 6, rl.RLConfig(reward_normalization="running"))
  with pytest.raises(ValueError, match="OnlineDpo.loss='kto'"):
    rl.OnlineDpo.build(tiny_model(), 6, loss="kto")


class _Steps:
  """A trainer that records the rows of every step."""

  def __init__(self):
    self.rows = []

  def step(self, state, batch, rng):
    self.rows.append(np.asarray(batch["row"]).tolist())
    return state, {"loss": 0.0}


@pytest.mark.parametrize("k, by_prompt", [(1, False), (2, True), (4, True), (4, False)])
def test_minibatches_hold_whole_prompts_for_a_pairwise_loss_and_shuffled_rows_otherwise(k, by_prompt):
  """With minibatch_by_prompt (OAIF), every minibatch holds whole groups of K adjacent rows; each
  epoch visits every row once; otherwise (REINFORCE, RLOO, GRPO) the rows are shuffled alone, as
  they always were."""
  loop = object.__new__(rl.RolloutLoop)
  estimator = type("E", (), {"samples_per_prompt": k, "minibatch_by_prompt": by_prompt})()
  loop.estimator = rl.OnlineDpo.build(tiny_model(), 4) if (k, by_prompt) == (2, True) else estimator
  loop.config, loop.settings, loop.rng = rl.RLConfig(update_epochs=2, minibatches=4), rl.LoopSettings(seed=3), None
  loop.trainer = _Steps()
  n = 8 * k
  loop.update(None, {"tokens": np.zeros((n, 1)), "row": np.arange(n)}, it=5)
  assert len(loop.trainer.rows) == 8
  for epoch in range(2):
    steps = loop.trainer.rows[4 * epoch : 4 * epoch + 4]
    assert sorted(sum(steps, [])) == list(range(n)) and all(len(rows) == 2 * k for rows in steps)
    if by_prompt:
      assert all(rows[j] // k == rows[j - j % k] // k for rows in steps for j in range(len(rows)))
    else:
      assert sum(steps, []) == np.random.default_rng([3, 5, epoch]).permutation(n).tolist()


class _FakeLabeler:
  def label_pairs(self, pairs, config):
    out = []
    for p in pairs:
      if "LONG" in p["response_a"]:
        out.append({"id": p["id"], "p_a": None, "error": "too long"})
      else:
        p_a = 0.9 if len(p["response_a"]) > len(p["response_b"]) else 0.2
        out.append({"id": p["id"], "p_a": p_a, "p1_ab": p_a, "p1_ba": 1 - p_a})
    return out


def test_pairwise_scorer_scores_each_pair_and_keeps_what_the_labeler_said():
  scorer = scorers.PairwiseScorer(_labeler=_FakeLabeler())
  inputs = ["x", "x", "y", "y", "z", "z"]
  got = scorer(inputs, ["long one", "short", "a", "bbb", "LONG", "b"])
  np.testing.assert_allclose(got, [0.9, 0.1, 0.2, 0.8, 0.5, 0.5], rtol=1e-6)
  assert scorer.unlabeled == 1 and scorer.last_details[2] == {"error": "too long"}
  assert scorer.last_details[0] == {"p1_ab": 0.9, "p1_ba": pytest.approx(0.1)}
  with pytest.raises(ValueError, match="adjacent rows"):
    scorer(["x", "y"], ["a", "b"])
  with pytest.raises(ValueError, match="adjacent rows"):
    scorer(["x", "x", "y"], ["a", "b", "c"])


def toy_pairwise(inputs, responses):
  """A toy AI labeler: prefers the response with more lowercase letters, softly."""
  score = lowercase_fraction(inputs, responses)
  p_a = 1 / (1 + np.exp(-8.0 * (score[0::2] - score[1::2])))
  return np.stack([p_a, 1 - p_a], axis=1).reshape(-1).astype(np.float32)


def _oaif(workdir, iterations):
  return run_rl(
    str(workdir),
    tiny_source(),
    toy_pairwise,
    estimator=lambda m, p, c: rl.OnlineDpo.build(m, p, c, beta=0.1),
    task="tldr_prompts",
    config=rl.RLConfig(update_epochs=2, minibatches=2),
    sampling_config=sampling.SamplingConfig(max_new_tokens=16, temperature=1.0),
    max_prompt_len=32,
    batch_size=8,
    num_iterations=iterations,
    policy_optimizer=optimizers.adamw(3e-3),
    mesh_shape={"data": 2},
    checkpoint_every=2,
    record_rollouts=True,
    tensorboard=False,
    progress=False,
  )


def _rollouts(workdir):
  with open(workdir / "rollouts.jsonl") as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_oaif_learns_the_labelers_preference_and_resumes_exactly(tmp_path):
  """8 prompts x 2 samples per iteration, labeled by a toy labeler that prefers lowercase: the
  policy's lowercase fraction climbs by more than 0.2 in 20 iterations. rollouts.jsonl holds each
  prompt's pair and label once per iteration; after losing its last checkpoint, a rerun resumes at
  the one before and writes the same pairs and labels again."""
  summary = _oaif(tmp_path, 20)
  lines = _rollouts(tmp_path)
  assert [x["iteration"] for x in lines] == [i for i in range(1, 21) for _ in range(8)]
  fraction = lambda it: np.mean([lowercase_fraction(None, x["responses"]) for x in lines if x["iteration"] == it])  # noqa: E731
  start, late = fraction(1), np.mean([fraction(it) for it in range(16, 21)])
  print(f"oaif: lowercase {start:.3f} -> {late:.3f}")
  assert late > start + 0.2, (start, late)
  assert all(len(x["responses"]) == 2 and x["raw_rewards"][0] + x["raw_rewards"][1] == pytest.approx(1) for x in lines)
  assert summary["method"] == "OAIF (DPO)" and summary["progress_metric"] == "rollout_accuracy"
  assert summary["compilations"] == {"sampler_prefill": 1, "sampler_decode": 1, "rollout_targets": 1, "update_step": 1}
  # lose the last checkpoint (iteration 20 = step 80): the rerun resumes at iteration 18
  Checkpointer(str(tmp_path / "checkpoints")).manager.delete(80)
  _oaif(tmp_path, 20)
  assert _rollouts(tmp_path) == lines


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("loss, beta", [("dpo", 0.1), ("ipo", 0.05)])
def test_dpo_stage_learns_soft_ai_labels(tmp_path, loss, beta):
  """From a random policy, DPO or IPO (whose targets (2p - 1) / (2 beta) want a smaller beta) on
  the soft labels of marker pairs: the implicit preference agrees with the held-out human and AI
  labels on more than 85% of pairs within 60 steps; the curve, the KL to the reference and the
  summary are written, and a rerun trains nothing more."""
  pairs, labels = _pairs(160, seed=0)
  task = _write_jsonl(tmp_path / "pairs.jsonl", [{"input": p.pop("inputs"), **p} for p in pairs])
  ids = [p["id"] for p in data.load_pairs(task, "train")]
  ai = _write_jsonl(tmp_path / "labels.jsonl", [{"id": i, "p_a": p} for i, p in zip(ids, labels)])
  settings = dict(task=task, eval_split=None, eval_fraction=0.2, ai_labels=ai, loss=loss, beta=beta, max_len=40)
  settings |= dict(batch_size=16, num_steps=60, optimizer=optimizers.adamw(3e-3))
  settings |= dict(kl_prompts=4, kl_max_new_tokens=8, mesh_shape={"data": 2})
  settings["fit"] = trainer.FitConfig(eval_every=30, log_every=10, tensorboard=False)
  summary = run_dpo(str(tmp_path / "run"), tiny_source(), **settings)
  print(loss, {k: v for k, v in summary.items() if k.startswith("eval_")})
  assert summary["eval_pairs"] == 32 and summary["train_pairs"] == 128
  assert summary["eval_accuracy_human"] > 0.85 and summary["eval_accuracy_ai"] > 0.85
  assert summary["eval_kl_to_reference"] > 0 and (tmp_path / "run" / "curves.png").exists()
  rows = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
  evals = [r["eval/accuracy_human"] for r in rows if "eval/accuracy_human" in r]
  assert len(evals) == 2 and all(np.isfinite(r.get("loss", 0.0)) for r in rows)
  again = run_dpo(str(tmp_path / "run"), tiny_source(), **settings)
  assert again["steps"] == 60 and len(open(tmp_path / "run" / "metrics.jsonl").readlines()) == len(rows)
