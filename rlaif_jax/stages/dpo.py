"""The `dpo` stage: a policy trained on labeled pairs with DPO or IPO (no reward model, no sampling).

Labels: the AI labeler's soft P(A) (default), the human choices, or both (a mixture), read as the
rm stage reads them, so a DPO policy and a reward model can learn from the same pairs. The
policy starts from the policy source, which is also the frozen reference. Every eval_every
steps, the implicit preference sigmoid(beta h) is scored against the held-out pairs' human
(and AI) labels and the policy's KL to the reference is measured on its own samples. Writes
metrics.jsonl, tensorboard/, curves.png, summary.json and checkpoints (the policy's parameters,
loaded by other stages like an SFT model's); a rerun resumes where it stopped. With `lora`
(models.LoraConfig), adapters train on the policy's frozen weights, which are also the reference
(read with the adapters at zero): one copy of the weights, and checkpoints of the adapters alone.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import optax

from rlaif_jax import data, dpo, generation, models, optimizers, partitioning, records, reward, trainer
from rlaif_jax.stages.base import stage

CURVES = ["loss", "accuracy", "eval/accuracy_human", "eval/accuracy_ai", "eval/kl_to_reference", "margin"]


@stage(curves=CURVES, title="DPO")
def run_dpo(
  workdir: str,
  policy: models.ModelSource,
  task: str | None = "hh_harmless_pairs",
  train_split: str = "train",
  eval_split: str | None = "test",
  candidates_file: str | None = None,
  label_source: str = "ai",
  ai_labels: str | None = None,
  loss: str = "dpo",
  beta: float = 0.1,
  eval_fraction: float = 0.2,
  max_len: int = 512,
  batch_size: int = 16,
  num_steps: int = 200,
  optimizer: optax.GradientTransformation | None = None,
  learning_rate=None,
  kl_prompts: int = 16,
  kl_max_new_tokens: int = 64,
  lora: models.LoraConfig | None = None,
  stop: generation.StopRule = generation.StopRule(),
  mesh_shape: dict | None = None,
  rules=partitioning.DEFAULT_RULES,
  seed: int = 0,
  fit: trainer.FitConfig = trainer.FitConfig(keep_checkpoints=2),
) -> dict:
  """Trains the policy (from the policy source, also the frozen reference) with loss 'dpo' or
  'ipo' on the pairs' label_source labels ('ai' with ai_labels, a label stage's labels.jsonl;
  'human'; or 'mixture'). Held-out pairs come from eval_split, or a seeded eval_fraction of the
  training pairs when it is None. kl_prompts held-out contexts (0: none) are sampled for the KL
  to the reference, with at most kl_max_new_tokens tokens ended by the task's stop rule. fit: the
  checkpoint, log and evaluation cadence (trainer.FitConfig; gin: dpo.Fit)."""
  objective = dpo.DpoObjective(None, beta, loss)  # checks loss and beta before anything loads
  ai = reward.read_ai_labels(ai_labels) if ai_labels else None
  split = (task, train_split, eval_split, candidates_file, eval_fraction, 0.0)
  pairs, eval_pairs = reward.train_eval_pairs(*split, ai, seed, stage="run_dpo")
  where = candidates_file or data.source_name(task, train_split)  # what the labels are joined to
  rows, labels = reward.labeled_examples(pairs, label_source, ai, "run_dpo", where, batch_size)
  mesh = partitioning.make_mesh(mesh_shape)
  partitioning.check_batch_fits(batch_size, mesh)
  if kl_prompts:
    partitioning.check_batch_fits(kl_prompts, mesh, "run_dpo.kl_prompts")
  reference = policy.load(mesh, rules, lora=lora, seed=seed)
  objective = dpo.DpoObjective(reference.model, beta, loss)
  arrays, stats = reward.pair_arrays(rows, labels, reference.vocab, max_len)
  logprobs = dpo.PairLogprobs(reference.model, batch_size, mesh, rules)
  arrays["ref_logp"] = logprobs(reference.params, arrays)
  init = functools.partial(models.init_params, reference.model, boxed=True)
  optimizer = optimizer or optimizers.adamw(1e-6)
  dpo_trainer = trainer.Trainer(
    objective.loss_fn, init, optimizer, mesh, rules, schedule=learning_rate, frozen=reference.frozen
  )
  kl = _sampled_kl(reference, eval_pairs or rows, kl_prompts, kl_max_new_tokens, max_len, mesh, rules, stop, seed)
  eval_fn = _evaluator(logprobs, beta, reference, eval_pairs or rows, ai, max_len, kl)  # of the full params
  state = trainer.fit(
    dpo_trainer,
    data.ArrayDataset(arrays, batch_size, seed).batch,
    num_steps,
    workdir=workdir,
    seed=seed,
    config=fit,
    eval_fn=eval_fn,
    initial_params=reference.params,
    reads=data.encoder.reading(reference.vocab),
    adapters_of=reference.adapters_of,
  )
  final = eval_fn(dpo_trainer.full_params(state.params), full=True)  # every process: a collective
  summary = {
    "steps": int(state.step),
    "loss": loss,
    "beta": beta,
    "label_source": label_source,
    "reward_source": _label_source_identity(label_source, ai_labels),  # compared with the judge by the report
    "train_pairs": len(rows),
    "eval_pairs": len(eval_pairs) if eval_pairs else 0,
    "evaluated_on": "held-out pairs" if eval_pairs else "training pairs (none held out)",
    "truncated_contexts": stats["truncated_inputs"],
    "truncated_responses": stats["truncated_responses"],
  }
  return _with_final(summary, final)


def _with_final(summary: dict, final: dict) -> dict:
  """The summary with the final evaluation and Wilson intervals of its accuracies."""
  return summary | reward.accuracy_intervals({f"eval_{k}": v for k, v in final.items() if not k.startswith("_")})


def _sampled_kl(reference, pairs, kl_prompts, max_new_tokens, max_len, mesh, rules, stop, seed):
  """The KL to the reference on the policy's samples to kl_prompts of the pairs' contexts (None: 0)."""
  if not kl_prompts:
    return None
  contexts = list(dict.fromkeys(p["inputs"] for p in pairs))[:kl_prompts]
  contexts += contexts[:1] * (kl_prompts - len(contexts))  # a fixed batch, however few contexts
  model, vocab = reference.model, reference.vocab
  return dpo.SampledKL(model, vocab, reference.params, contexts, max_new_tokens, max_len, mesh, rules, stop, seed)


def _evaluator(logprobs: dpo.PairLogprobs, beta: float, reference, pairs, ai, max_len, kl=None):
  """(params, full=False) -> accuracy of the implicit preference sigmoid(beta h) vs the pairs'
  human and AI labels (reward.preference_evaluator on the implicit rewards beta log(pi / pi_ref))
  and, with kl, the KL to the reference on the policy's samples."""
  arrays, _ = reward.pair_arrays(pairs, [0.5] * len(pairs), reference.vocab, max_len)
  ref = logprobs(reference.params, arrays)

  def implicit_rewards(params) -> np.ndarray:
    return beta * (logprobs(params, arrays) - ref)

  evaluate = reward.preference_evaluator(implicit_rewards, pairs, ai)

  def eval_fn(params, full: bool = False) -> dict:
    out = evaluate(params, full)
    if kl is not None:
      out["kl_to_reference"] = kl(params)
    return out

  return eval_fn


def _label_source_identity(label_source: str, ai_labels: str | None) -> str:
  """Whose preferences the policy learned: the AI labeler's identity (from the label stage's
  report.json beside the labels), or "human"."""
  if label_source == "human" or not ai_labels:
    return "human"
  found = records.read_json(os.path.join(os.path.dirname(ai_labels), "report.json")) or {}
  return found.get("labeler_source") or "labels:" + os.path.normpath(os.path.abspath(ai_labels))
