"""The SFT stage: fine-tune a decoder on (prompt, target) pairs, then show a few samples."""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import optax

from rlaif_jax import data, models, optimizers, partitioning, plots, sampling, trainer, writers
from rlaif_jax.sft import SFTObjective


def task_vocabulary(task: str):
  """The vocabulary a registered seqio task tokenizes with."""
  import seqio

  return seqio.get_mixture_or_task(task).output_features["inputs"].vocabulary


def _from_pretrained(source, model_config, task, mesh, rules):
  """(config, params, task) for a pretrained start: the task registered again with the
  model's own vocabulary, under a suffix."""
  import seqio

  import tasks
  from rlaif_jax.models import pretrained

  loaded = pretrained.load_converted(source, mesh, rules, dtype=model_config.dtype if model_config else None)
  suffix = "_" + "".join(c if c.isalnum() else "_" for c in os.path.basename(os.path.normpath(source)))
  if f"{task}{suffix}" not in seqio.TaskRegistry.names():
    tasks.register_all(loaded.vocab, suffix)
  return loaded.config, loaded.params, f"{task}{suffix}"


def make_evaluator(objective: SFTObjective, mesh, rules, batches):
  """params -> token-weighted loss and accuracy over the eval batches (compiled once)."""
  fn = jax.jit(objective.eval_metrics)
  sharded = [partitioning.shard_batch(b, mesh, rules) for b in batches]

  def evaluate(params) -> dict:
    totals, weight = {"loss": 0.0, "accuracy": 0.0}, 0.0
    with partitioning.axis_rules(mesh, rules):
      for batch in sharded:
        m = jax.device_get(fn(params, batch))
        for k in totals:
          totals[k] += float(m[k]) * float(m["weight"])
        weight += float(m["weight"])
    return {k: v / max(weight, 1.0) for k, v in totals.items()}

  return evaluate


def run_sft(
  workdir: str,
  model_config: models.TransformerConfig,
  task: str = "tldr_sft",
  train_split: str = "train",
  eval_split: str | None = "validation",
  max_len: int = 512,
  batch_size: int = 16,
  num_steps: int = 200,
  optimizer: optax.GradientTransformation | None = None,
  learning_rate=None,
  mesh_shape: dict | None = None,
  rules=partitioning.DEFAULT_RULES,
  accum_steps: int = 1,
  seed: int = 0,
  checkpoint_every: int = 100,
  keep_checkpoints: int = 3,
  log_every: int = 10,
  eval_every: int = 50,
  num_samples: int = 3,
  sampling_config: sampling.SamplingConfig = sampling.SamplingConfig(max_new_tokens=64, temperature=0.0),
  tensorboard: bool = True,
  pretrained: str | None = None,
) -> dict:
  """Trains, evaluates, writes `summary.json`, `curves.png` and `samples.jsonl` under workdir.

  `learning_rate` (a schedule) is only used for logging; the optimizer owns the real one.
  pretrained (a preset such as "gemma3-270m", a GGUF file or a model folder) starts from
  those weights with their config and vocabulary (model_config then only gives the dtype).
  """
  mesh = partitioning.make_mesh(mesh_shape)
  initial_params = None
  if pretrained:
    model_config, initial_params, task = _from_pretrained(pretrained, model_config, task, mesh, rules)
  vocab = task_vocabulary(task)
  if vocab.vocab_size > model_config.vocab_size:
    raise ValueError(
      f"model_config.vocab_size={model_config.vocab_size} is smaller than task {task!r}'s vocabulary "
      f"({vocab.vocab_size})"
    )
  partitioning.check_batch_fits(batch_size, mesh)
  train_examples = data.task_examples(task, train_split)
  train_arrays, train_stats = data.sft_features(train_examples, max_len, vocab.pad_id)
  train_set = data.ArrayDataset(train_arrays, batch_size, seed)
  eval_examples = data.task_examples(task, eval_split) if eval_split else []
  logging.info("SFT data: %s %s, %s %s", train_split, train_stats, eval_split, len(eval_examples))

  model = models.Transformer(model_config)
  objective = SFTObjective(model)
  sft_trainer = trainer.Trainer(
    objective.loss_fn,
    functools.partial(models.init_params, model, boxed=True),
    optimizer or optimizers.adamw(1e-3),
    mesh,
    rules,
    accum_steps,
    schedule=learning_rate,
  )
  eval_fn = None
  if len(eval_examples) >= batch_size:
    eval_arrays, _ = data.sft_features(eval_examples, max_len, vocab.pad_id)
    eval_fn = make_evaluator(objective, mesh, rules, data.ArrayDataset(eval_arrays, batch_size).eval_batches())

  logging.info(
    "SFT: %d train / %d eval examples, %d params",
    len(train_examples),
    len(eval_examples),
    models.count_params(jax.eval_shape(sft_trainer.init_params_fn, jax.random.PRNGKey(0))),
  )
  before = eval_fn(initial_params) if eval_fn is not None and initial_params is not None else None
  state = trainer.fit(
    sft_trainer,
    train_set.batch,
    num_steps,
    workdir=workdir,
    seed=seed,
    checkpoint_every=checkpoint_every,
    keep_checkpoints=keep_checkpoints,
    log_every=log_every,
    eval_fn=eval_fn,
    eval_every=eval_every,
    tensorboard=tensorboard,
    initial_params=initial_params,
  )
  summary = {
    "steps": int(state.step),
    **({f"eval_{k}_before": v for k, v in before.items()} if before else {}),
    "train_examples": len(train_examples),
    "train_truncated_inputs": train_stats["truncated_inputs"],
    "eval_examples": len(eval_examples),
  }
  if eval_fn is not None:
    summary.update({f"eval_{k}": v for k, v in eval_fn(state.params).items()})

  if jax.process_index() == 0:
    records = writers.read_jsonl_metrics(os.path.join(workdir, "metrics.jsonl"))
    summary["curves_png"] = plots.plot_curves(
      records, ["loss", "eval/loss", "accuracy", "grad_norm"], os.path.join(workdir, "curves.png"), "SFT"
    )
  shown = (eval_examples or train_examples)[:num_samples]
  if shown:
    prompts = [ex["inputs_pretokenized"].decode() for ex in shown]
    texts = sampling.generate_texts(model, state.params, vocab, prompts, sampling_config, max_len, seed)
    summary["samples"] = [
      {"prompt": p, "reference": ex["targets_pretokenized"].decode(), "generated": g}
      for p, ex, g in zip(prompts, shown, texts)
    ]
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "samples.jsonl"), "w", encoding="utf-8") as f:
        for s in summary["samples"]:
          f.write(json.dumps(s) + "\n")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump({k: v for k, v in summary.items() if k != "samples"}, f, indent=2)
  return summary
