"""One generic, model-agnostic trainer.

A trainer owns one state pytree (step, params of every trained model, optimizer state) and
one update step `step(state, batch, rng) -> (state, metrics)`, jitted once with in/out
shardings and the state donated. What is trained is given by a loss function
`loss_fn(params, batch, rng) -> (loss, metrics)`; the trainer never looks inside it.

If `metrics` holds "weight" (e.g. the number of target tokens), gradient accumulation
combines microbatches weighted by it, so that accumulating equals one large batch.

With `frozen` parameters (a LoRA run's base, models.lora.split), the state holds only the rest
(adapters, scalar heads): loss_fn reads both joined, gradients, optimizer moments and checkpoints
exist for the trained part only, and the frozen arrays are an argument of the step, never copied.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlaif_jax import partitioning
from rlaif_jax.checkpoints import Checkpointer, abstract_like, claim, record_adapters, record_reading
from rlaif_jax.checks import check_arguments, current_made_with
from rlaif_jax.compilation import CountedJit
from rlaif_jax.writers import MetricsWriter

LossFn = Callable[[Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, dict]]
Batch = Mapping[str, np.ndarray]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def _microbatches(batch, accum_steps: int):
  """[B, ...] -> [accum, B / accum, ...], microbatch i taking rows i, i + accum, ...

  Interleaving keeps each device's rows on that device when the batch axis is sharded.
  """

  def split(x):
    if x.shape[0] % accum_steps:
      raise ValueError(f"batch of {x.shape[0]} rows does not split into accum_steps={accum_steps}")
    return x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:]).swapaxes(0, 1)

  return jax.tree_util.tree_map(split, batch)


def join(trained, frozen) -> Any:
  """One parameter tree from the trained part and the frozen one (None: trained alone)."""
  if not frozen:
    return trained
  flat = traverse_util.flatten_dict(frozen) | traverse_util.flatten_dict(trained)
  return traverse_util.unflatten_dict(flat)


def without(tree, frozen) -> Any:
  """tree's leaves at the paths frozen does not hold (the whole tree when frozen is None)."""
  if not frozen:
    return tree
  held = set(traverse_util.flatten_dict(frozen))
  return traverse_util.unflatten_dict({k: v for k, v in traverse_util.flatten_dict(tree).items() if k not in held})


def _per_model_norms(grads) -> dict:
  """grad_norm/NAME for each top-level entry of params that hold several models."""
  return {f"grad_norm/{k}": optax.tree.norm(v) for k, v in grads.items()}


def make_train_step(
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  accum_steps: int = 1,
  schedule: Callable[[Any], Any] | None = None,
  norms_per_model: bool = False,
):
  """Builds the pure update step; jit it with `Trainer` or by hand. norms_per_model adds a
  gradient norm per top-level entry of params (e.g. "policy" and "value")."""

  def step(state: TrainState, batch, rng, frozen=None):
    def grads_of(params, batch, rng):
      joined = lambda p, b, r: loss_fn(join(p, frozen), b, r)  # noqa: E731
      (loss, metrics), grads = jax.value_and_grad(joined, has_aux=True)(params, batch, rng)
      metrics = dict(metrics)
      weight = jnp.asarray(metrics.pop("weight", 1.0), jnp.float32)
      return loss, metrics, grads, weight

    rng = jax.random.fold_in(rng, state.step)
    if accum_steps == 1:
      loss, metrics, grads, weight = grads_of(state.params, batch, rng)
    else:
      micro = _microbatches(batch, accum_steps)

      def body(carry, xs):
        mb, i = xs
        loss, metrics, grads, w = grads_of(state.params, mb, jax.random.fold_in(rng, i))
        summed = jax.tree_util.tree_map(lambda c, v: c + w * v, carry[0], (loss, metrics, grads))
        return (summed, carry[1] + w), None

      first = jax.tree_util.tree_map(lambda x: x[0], micro)
      shapes = jax.eval_shape(grads_of, state.params, first, rng)[:3]
      zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)
      (summed, weight), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)), (micro, jnp.arange(accum_steps)))
      loss, metrics, grads = jax.tree_util.tree_map(lambda x: x / weight, summed)
      grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, state.params)

    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
      **metrics,
      "loss": loss,
      "weight": weight,
      "grad_norm": optax.tree.norm(grads),
      **(_per_model_norms(grads) if norms_per_model else {}),
      "update_norm": optax.tree.norm(updates),
      "param_norm": optax.tree.norm(params),
    }
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


class Trainer:
  """Sharded state initialization, a jitted step, and a training loop with checkpoints.

  init_params_fn(rng) returns parameters whose leaves carry logical axis metadata
  (nn.Partitioned), e.g. `functools.partial(models.init_params, model, boxed=True)`. frozen:
  placed parameters loss_fn reads but the trainer never updates or saves (a LoRA base); the
  state then holds init_params_fn's other leaves only.
  """

  def __init__(
    self,
    loss_fn: LossFn,
    init_params_fn: Callable[[jax.Array], Any],
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules=partitioning.DEFAULT_RULES,
    accum_steps: int = 1,
    schedule=None,
    norms_per_model: bool = False,
    frozen=None,
  ):
    self.frozen = frozen or None
    self.loss_fn = loss_fn
    self.init_params_fn = init_params_fn
    self.optimizer = optimizer
    self.mesh = mesh
    self.rules = rules
    self.accum_steps = accum_steps
    self._step_fn = make_train_step(loss_fn, optimizer, accum_steps, schedule, norms_per_model)
    self._jitted = None
    self.state_shardings = None
    self.replicated = NamedSharding(mesh, PartitionSpec())
    self._cpu_collectives = mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"

  def _init_boxed(self, rng):
    params = without(self.init_params_fn(rng), self.frozen)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.optimizer.init(params))

  def init_state(self, rng: jax.Array, params=None, donate: bool = False) -> TrainState:
    """A fresh state, created directly in its shardings; from `params` when given (e.g. an
    SFT checkpoint), else from init_params_fn. With frozen parameters, params' leaves at the
    trained paths are used where it has them (a reward model's head), fresh ones elsewhere (new
    adapters), and its frozen leaves are ignored. donate: params' arrays become the state's
    (deleted for the caller) instead of copied: one copy of the weights where nothing else reads them."""
    if params is None or self.frozen:
      state, self.state_shardings = partitioning.sharded_init(self._init_boxed, self.mesh, self.rules, rng)
      if params is None:
        return state
      fresh = traverse_util.flatten_dict(state.params)
      given = traverse_util.flatten_dict(params)
      params = traverse_util.unflatten_dict({k: given.get(k, v) for k, v in fresh.items()})
    self.abstract_state(rng)  # computes the shardings
    params = jax.device_put(params, self.state_shardings.params)
    init = lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=self.optimizer.init(p))  # noqa: E731
    with partitioning.axis_rules(self.mesh, self.rules):
      return jax.jit(init, out_shardings=self.state_shardings, donate_argnums=0 if donate else ())(params)

  def abstract_state(self, rng: jax.Array) -> TrainState:
    """Shapes, dtypes and shardings of the state, without computing it."""
    shapes = jax.eval_shape(lambda r: flax.linen.meta.unbox(self._init_boxed(r)), rng)
    if self.state_shardings is None:
      boxed = jax.eval_shape(self._init_boxed, rng)
      self.state_shardings = flax.linen.meta.unbox(partitioning.logical_shardings(boxed, self.mesh, self.rules))
    return abstract_like(shapes, self.state_shardings)

  def restore_or_init(
    self, rng: jax.Array, checkpointer: Checkpointer | None, initial_params=None, donate: bool = False
  ) -> TrainState:
    """The latest checkpoint's state if there is one, else a fresh state (from initial_params)."""
    if checkpointer is not None and checkpointer.latest_step() is not None:
      state = checkpointer.restore(self.abstract_state(rng))
      logging.info("restored step %d from %s", int(state.step), checkpointer.directory)
      return state
    return self.init_state(rng, initial_params, donate)

  def compiled_step(self, batch: Mapping[str, jax.Array]):
    """The jitted step, built on first use from the batch's structure; reused afterwards."""
    if self._jitted is None:
      batch_shardings = {k: partitioning.batch_sharding(self.mesh, v.ndim, self.rules) for k, v in batch.items()}
      shardings = (self.state_shardings, batch_shardings, self.replicated)
      if self.frozen:  # an argument of the step in the shardings it was placed in
        shardings += (jax.tree_util.tree_map(lambda x: x.sharding, self.frozen),)
      self._jitted = CountedJit(
        self._step_fn,
        in_shardings=shardings,
        out_shardings=(self.state_shardings, self.replicated),
        donate_argnums=0,
      )
    return self._jitted

  def full_params(self, params) -> Any:
    """The trained params joined with the frozen ones: what the model reads."""
    return join(params, self.frozen)

  @property
  def traces(self) -> int:
    """How many times the step was compiled (1 when every batch had the same shapes)."""
    return 0 if self._jitted is None else self._jitted.traces

  def step(self, state: TrainState, local_batch: Batch, rng: jax.Array):
    """One update on this process's rows of the global batch."""
    partitioning.check_batch_fits(next(iter(local_batch.values())).shape[0] * jax.process_count(), self.mesh)
    batch = partitioning.shard_batch(local_batch, self.mesh, self.rules)
    with partitioning.axis_rules(self.mesh, self.rules):
      state, metrics = self.compiled_step(batch)(state, batch, rng, *([self.frozen] if self.frozen else []))
    if self._cpu_collectives:
      # Several virtual CPU devices share a few cores; many steps queued at once can starve
      # one device's thread past XLA's 40 s collective rendezvous timeout. Wait per step.
      jax.block_until_ready(metrics)
    return state, metrics


class PreemptionFlag:
  """Set by SIGTERM; all processes agree on it before anyone saves. `then` says what the job
  does before it stops (training saves a checkpoint; labeling finishes its chunk)."""

  def __init__(self, then: str = "saving a checkpoint after this step"):
    self.raised = False
    self.then = then
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, never preempted
      self._previous = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: %s", self.then)
    self.raised = True

  def agreed(self) -> bool:
    if jax.process_count() == 1:
      return self.raised
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.raised))))

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Preempted(Exception):
  """A job stopped on SIGTERM after saving what it had done: a checkpoint at `step`, or (saved)
  e.g. "saved 64 labels to runs/x/labels.jsonl"."""

  def __init__(self, step: int, saved: str | None = None):
    super().__init__(f"preempted by SIGTERM; {saved or f'checkpoint saved at step {step}'}; rerun to resume")
    self.step = step


@dataclasses.dataclass(frozen=True)
class FitConfig:
  """How a training run goes, not what it learns (made_with leaves it out, so a run resumed under
  other values is the same run): a checkpoint every checkpoint_every steps (and at the last),
  the last keep_checkpoints of them kept (None: all); metrics every log_every steps; the held-out
  evaluation every eval_every steps and at the last (0: never); TensorBoard event files beside
  metrics.jsonl; a progress bar. The training stages take one each, under their own gin names
  (sft.Fit, rm.Fit, dpo.Fit), so one stage's cadence never reaches another's."""

  checkpoint_every: int = 100
  keep_checkpoints: int | None = 3
  log_every: int = 10
  eval_every: int = 50
  tensorboard: bool = True
  progress: bool = True

  def __post_init__(self):
    check_arguments("FitConfig", dataclasses.asdict(self))


def fit(
  trainer: Trainer,
  data_fn: Callable[[int], Batch],
  num_steps: int,
  *,
  workdir: str,
  seed: int = 0,
  config: FitConfig = FitConfig(),
  eval_fn: Callable[[Any], Mapping[str, float]] | None = None,
  initial_params=None,
  reads: dict | None = None,
  made_with: dict | None = None,
  adapters_of: dict | None = None,
  donate_initial: bool = False,
) -> TrainState:
  """Trains to num_steps, resuming from the latest checkpoint under workdir.

  data_fn(step) returns this process's rows of step's batch, deterministically, so a resumed
  run sees the same batches as an uninterrupted one; the step's rng is fold_in(seed, step).
  config (FitConfig) is the checkpoint, log and evaluation cadence. On SIGTERM, saves a
  checkpoint and raises Preempted. initial_params start a new run (they
  are ignored when a checkpoint exists). reads (data.encoder.reading of the vocabulary the
  batches were encoded with) is recorded beside the checkpoints, and a folder that records
  another is refused. made_with (default: the running stage's, checks.current_made_with) is what
  the result depends on: checkpoints trained with other settings are moved aside
  (checkpoints.claim), so a rerun under new settings trains anew instead of restoring the old model.
  adapters_of (a LoRA run's, models.LoadedModel.adapters_of) is written as checkpoints/adapters.json,
  so that other stages read the adapters onto their base. donate_initial: initial_params' arrays
  become the state's (for a stage that reads them no more: no second copy of the weights).
  """
  from tqdm.auto import tqdm

  rng = jax.random.PRNGKey(seed)
  claim(f"{workdir}/checkpoints", made_with if made_with is not None else current_made_with())
  if reads is not None:
    record_reading(f"{workdir}/checkpoints", reads)
  record_adapters(f"{workdir}/checkpoints", adapters_of)
  checkpointer = Checkpointer(f"{workdir}/checkpoints", config.checkpoint_every, config.keep_checkpoints)
  state = trainer.restore_or_init(rng, checkpointer, initial_params, donate_initial)
  start = int(state.step)
  frozen = sum(x.size for x in {id(x): x for x in jax.tree_util.tree_leaves(trainer.frozen)}.values())  # shared once
  trained = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  logging.info("%s: training %d parameters%s", workdir, trained, f" beside {frozen} frozen ones" if frozen else "")
  writer = MetricsWriter(workdir, tensorboard=config.tensorboard, resumed_at=start)
  is_main = jax.process_index() == 0
  bar = tqdm(total=num_steps, initial=start, desc="train", disable=not (config.progress and is_main), unit="step")
  last_time, last_step, tokens = time.perf_counter(), start, 0
  try:
    with PreemptionFlag() as preemption:
      for step in range(start, num_steps):
        local = data_fn(step)
        tokens += int(np.asarray(local["tokens"]).size * jax.process_count()) if "tokens" in local else 0
        state, metrics = trainer.step(state, local, rng)
        done = step + 1
        bar.update(1)
        if done % config.log_every == 0 or done == num_steps:
          scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
          now = time.perf_counter()
          scalars["steps_per_sec"] = (done - last_step) / (now - last_time)
          if tokens:
            scalars["tokens_per_sec"] = tokens / (now - last_time)
          last_time, last_step, tokens = now, done, 0
          writer.write(done, scalars)
          bar.set_postfix(loss=f"{scalars['loss']:.4f}", tok_s=f"{scalars.get('tokens_per_sec', 0):.0f}")
          logging.info("step %d: %s", done, ", ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items())))
        if eval_fn is not None and config.eval_every and (done % config.eval_every == 0 or done == num_steps):
          writer.write(done, {f"eval/{k}": v for k, v in eval_fn(trainer.full_params(state.params)).items()})
        checkpointer.save(done, state, force=done == num_steps)
        if preemption.agreed():
          checkpointer.save(done, state, force=True)
          checkpointer.wait()
          raise Preempted(done)
  finally:
    bar.close()
    writer.close()
    checkpointer.close()
  return state
