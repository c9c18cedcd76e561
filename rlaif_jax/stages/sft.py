"""The SFT stage: fine-tune a decoder on (prompt, target) pairs, then show a few samples."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

import jax
import optax

from rlaif_jax import data, generation, models, optimizers, partitioning, records, sampling, trainer
from rlaif_jax.sft import SFTObjective
from rlaif_jax.stages.base import stage

CURVES = ["loss", "eval/loss", "accuracy", "grad_norm"]


def task_vocabulary(task: str):
  """The vocabulary a registered seqio task tokenizes with."""
  return data.seqio_task(task).output_features["inputs"].vocabulary


def _start(model: models.ModelSource, task: str, mesh, rules, lora=None, seed: int = 0):
  """(the loaded model, or None for a random init, and the task). A pretrained start registers the
  task again with the model's own vocabulary, under a suffix. With lora, the model with fresh
  adapters (a random init's base too)."""
  if not (model.pretrained or model.checkpoint or lora):
    return None, task
  loaded = model.load(mesh, rules, lora=lora, seed=seed)
  if model.pretrained:
    import seqio

    from rlaif_jax import tasks

    suffix = "_" + "".join(c if c.isalnum() else "_" for c in os.path.basename(os.path.normpath(model.pretrained)))
    if f"{task}{suffix}" not in seqio.TaskRegistry.names():
      tasks.register_all(getattr(loaded.vocab, "base", loaded.vocab), suffix)  # a chat format is applied after
    task = f"{task}{suffix}"
  return loaded, task


def _checked_vocabulary(task: str, model_config):
  vocab = task_vocabulary(task)
  if vocab.vocab_size > model_config.vocab_size:
    raise ValueError(
      f"model_config.vocab_size={model_config.vocab_size} is smaller than task {task!r}'s vocabulary "
      f"({vocab.vocab_size})"
    )
  return vocab


def _train_arrays(examples, max_len: int, pad_id: int, pack: bool) -> tuple[dict, dict]:
  """sft_features' rows, packed several to a row when `pack` (the stats then add rows and fill)."""
  arrays, stats = data.sft_features(examples, max_len, pad_id)
  if not pack:
    return arrays, stats
  arrays, packing = data.pack_sft_features(arrays, pad_id)
  logging.info("SFT: %d examples packed into %d rows of %d tokens (%.0f%% real tokens)",
               packing["examples"], packing["rows"], max_len, 100 * packing["fill"])  # fmt: skip
  return arrays, stats | packing


def make_evaluator(objective: SFTObjective, mesh, rules, examples, max_len: int, vocab, batch_size: int):
  """params -> token-weighted loss and accuracy over the eval examples (compiled once); None
  when there are fewer examples than one batch."""
  if len(examples) < batch_size:
    return None
  eval_arrays, _ = data.sft_features(examples, max_len, vocab.pad_id)
  batches = data.ArrayDataset(eval_arrays, batch_size).eval_batches()
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


@stage(curves=CURVES, title="SFT")
def run_sft(
  workdir: str,
  model: models.ModelSource,
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
  fit: trainer.FitConfig = trainer.FitConfig(),
  num_samples: int = 3,
  sampling_config: sampling.SamplingConfig = sampling.SamplingConfig(max_new_tokens=64, temperature=0.0),
  stop: generation.StopRule = generation.StopRule(),  # where a sample ends besides EOS: the task's
  pack: bool = False,
  lora: models.LoraConfig | None = None,
) -> dict:
  """Trains, evaluates, writes `summary.json`, `curves.png` and `samples.jsonl` under workdir.

  fit: the checkpoint, log and evaluation cadence (trainer.FitConfig; gin: sft.Fit).
  pack: several examples to a row of max_len (data.pack_sft_features): batch_size rows hold more
  examples and less padding; the loss is still the mean over target tokens. Eval is unpacked.

  `learning_rate` (a schedule) is only used for logging; the optimizer owns the real one.
  model: a config (random init), a pretrained model (a preset such as "gemma3-270m", a GGUF
  file or a model folder: its weights, config and vocabulary) and/or a checkpoint to start from.
  lora: adapters train on the model's frozen weights (models.lora); checkpoints hold them alone.
  """
  mesh = partitioning.make_mesh(mesh_shape)
  loaded, task = _start(model, task, mesh, rules, lora, seed)
  network = loaded.model if loaded else models.Transformer(model.config)
  model_config, initial_params = network.config, loaded and loaded.params
  vocab = data.with_chat(_checked_vocabulary(task, model_config), model.chat_format, "ModelSource.chat_format")
  partitioning.check_batch_fits(batch_size, mesh)
  train_examples = data.encoder.sft_examples(data.task_examples(task, train_split), vocab)
  train_arrays, train_stats = _train_arrays(train_examples, max_len, vocab.pad_id, pack)
  eval_examples = data.encoder.sft_examples(data.task_examples(task, eval_split), vocab) if eval_split else []
  objective = SFTObjective(network)
  init = functools.partial(models.init_params, network, boxed=True)
  optimizer, frozen = optimizer or optimizers.adamw(1e-3), loaded and loaded.frozen
  sft_trainer = trainer.Trainer(
    objective.loss_fn, init, optimizer, mesh, rules, accum_steps, schedule=learning_rate, frozen=frozen
  )
  eval_fn = make_evaluator(objective, mesh, rules, eval_examples, max_len, vocab, batch_size)
  logging.info("SFT: %s, %d eval examples", train_stats, len(eval_examples))
  before = eval_fn(initial_params) if eval_fn is not None and initial_params is not None else None
  state = trainer.fit(
    sft_trainer,
    data.ArrayDataset(train_arrays, batch_size, seed).batch,
    num_steps,
    workdir=workdir,
    seed=seed,
    config=fit,
    eval_fn=eval_fn,
    initial_params=initial_params,
    reads=data.encoder.reading(vocab),
    adapters_of=loaded and loaded.adapters_of,
    donate_initial=True,  # read no more: the state's copy is the only one
  )
  params = sft_trainer.full_params(state.params)
  summary = {"steps": int(state.step), **({f"eval_{k}_before": v for k, v in before.items()} if before else {})}
  summary |= {
    f"train_{k}": train_stats[k] for k in ("examples", "truncated_inputs", "rows", "fill") if k in train_stats
  }
  summary["eval_examples"] = len(eval_examples)
  if eval_fn is not None:
    summary.update({f"eval_{k}": v for k, v in eval_fn(params).items()})
  shown = (eval_examples or train_examples)[:num_samples]
  samples = _samples(network, params, vocab, shown, sampling_config, stop, max_len, mesh, seed) if shown else []
  return _finish(workdir, summary, samples)


def _finish(workdir: str, summary: dict, samples: list[dict]) -> dict:
  """samples.jsonl; the summary with the samples (the stage decorator writes summary.json and curves.png)."""
  if samples:
    records.write_jsonl(os.path.join(workdir, "samples.jsonl"), samples)
  return summary | ({"samples": samples} if samples else {})


def _samples(network, params, vocab, examples, sampling_config, stop, max_len, mesh, seed) -> list[dict]:
  """The model's continuations of a few prompts beside their references (texts as sampled)."""
  prompts = [ex["inputs_pretokenized"].decode() for ex in examples]
  dp = partitioning.data_parallel_size(mesh)
  gen = generation.Generator(
    network, vocab, sampling_config, batch_size=dp * -(-len(prompts) // dp), max_prompt_len=max_len,
    stop=dataclasses.replace(stop, strip=False), mesh=mesh,
  )  # fmt: skip
  texts = [r["response"] for r in gen(params, prompts, seed)]
  return [
    {"prompt": p, "reference": ex["targets_pretokenized"].decode(), "generated": g}
    for p, ex, g in zip(prompts, examples, texts)
  ]
