"""orbax checkpoints of a whole train state: save every N steps, keep the last K, resume.

Checkpoints are read only from directories the user names; orbax stores arrays with
tensorstore and metadata as JSON (no pickle).

Every step folder a Checkpointer writes gets a manifest, checksums.json (the sha256 and size
of each other file in it), once orbax has finished writing the step: saves stay asynchronous,
and a finished step's manifest is written by the first `save` call that finds it done, or by
`wait` and `close`. Restoring checks a step against its manifest before orbax reads a byte of
it, so a flipped bit or a truncated file is reported by path instead of becoming NaN
parameters or an error deep inside tensorstore.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

MANIFEST = "checksums.json"


class CheckpointError(ValueError):
  """A checkpoint that cannot be used, with the file and tensor or field named."""


def abstract_like(tree, shardings) -> Any:
  """ShapeDtypeStructs carrying the target shardings, for restoring straight into them."""
  return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _paths(step_dir: str) -> list[tuple[str, str]]:
  """(relative, full) paths of the step folder's files, the manifest and its temporary file
  excepted, sorted."""
  full = [os.path.join(root, f) for root, _, files in os.walk(step_dir) for f in files]
  rel = sorted((os.path.relpath(p, step_dir), p) for p in full)
  return [(r, p) for r, p in rel if not r.startswith(MANIFEST)]


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(step_dir: str) -> None:
  """Writes step_dir/checksums.json: {"files": {relative path: {"sha256", "size"}}}."""
  files = {rel: {"sha256": _sha256(p), "size": os.path.getsize(p)} for rel, p in _paths(step_dir)}
  tmp = os.path.join(step_dir, MANIFEST + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"files": files}, f, indent=1)
  os.replace(tmp, os.path.join(step_dir, MANIFEST))  # a manifest is whole or absent


def _stats(step_dir: str) -> tuple:
  """Each file's size and modification time: they change whenever a file is rewritten."""
  stats = [(rel, os.stat(p)) for rel, p in _paths(step_dir)]
  return tuple((rel, st.st_size, st.st_mtime_ns) for rel, st in stats)


# Step folder -> its files' sizes and times when it last matched its manifest, so that an
# unchanged step is hashed once per process however many readers check it.
_matched: dict[str, tuple] = {}


def step_problem(step_dir: str) -> str | None:
  """What is wrong with a step folder by its checksums.json: the first missing, resized or
  changed file (sizes are compared before anything is hashed); None when all match, or when
  there is no manifest (an unverified step, logged)."""
  manifest = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(manifest):
    logging.warning(
      "checkpoint %s has no %s (older version, or the run stopped as it was saved): not verified", step_dir, MANIFEST
    )
    return None
  stats = (os.stat(manifest).st_mtime_ns, _stats(step_dir))
  if _matched.get(step_dir) == stats:
    return None
  try:
    with open(manifest, encoding="utf-8") as f:
      expected = {rel: (e["sha256"], int(e["size"])) for rel, e in json.load(f)["files"].items()}
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    return f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"
  if not expected:
    return f"{MANIFEST} lists no files (a step always has some)"
  outside = [rel for rel in expected if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == ".."]
  if outside:
    return f"{MANIFEST} names {outside[0]!r}, outside its step folder"
  for rel, (_, size) in sorted(expected.items()):
    path = os.path.join(step_dir, rel)
    if not os.path.isfile(path):
      return f"{rel} is missing"
    if os.path.getsize(path) != size:
      return f"{rel} has {os.path.getsize(path)} bytes, {size} expected (truncated?)"
  for rel, (digest, _) in sorted(expected.items()):
    if _sha256(os.path.join(step_dir, rel)) != digest:
      return f"{rel} does not match its sha256 in {MANIFEST} (bytes changed on disk)"
  _matched[step_dir] = stats
  return None


@jax.jit
def _finite(leaves):
  return jnp.stack([jnp.isfinite(x).all() for x in leaves])


def check_finite(tree, where: str) -> None:
  """Raises CheckpointError naming the first floating-point array of tree that holds NaN or
  inf; one small device computation and one transfer for the whole tree."""
  named = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not named:
    return
  ok = np.asarray(jax.device_get(_finite([x for _, x in named])))
  if not ok.all():
    leaf = jax.tree_util.keystr(named[int(np.argmin(ok))][0], simple=True, separator="/")
    raise CheckpointError(
      f"checkpoint {where} holds NaN or inf values, first in {leaf!r} (saved after training diverged, or corrupt "
      "if it has no checksums); delete that folder to use an earlier step"
    )


def latest_step_dir(directory: str) -> int | None:
  """The newest finished step folder of a checkpoints directory by its name (orbax writes a step
  under a temporary name and renames it when done), without reading it; None when there is none."""
  if not os.path.isdir(directory):
    return None
  steps = [
    int(name) for name in os.listdir(directory) if name.isdigit() and os.path.isdir(os.path.join(directory, name))
  ]
  return max(steps, default=None)


def step_identity(directory: str, step: int | None = None) -> str:
  """Which weights a checkpoints directory holds: its path, the step (default: the newest) and a
  digest of that step's checksums manifest (of its files' sizes and times where it has none), so
  a model trained again in the same folder has another identity. The path alone when there is
  no step yet."""
  where = os.path.normpath(os.path.abspath(directory))
  step = latest_step_dir(directory) if step is None else step
  if step is None:
    return where
  step_dir = os.path.join(directory, str(step))
  manifest = os.path.join(step_dir, MANIFEST)
  if os.path.isfile(manifest):
    with open(manifest, "rb") as f:
      content = hashlib.sha256(f.read()).hexdigest()[:12]
  elif os.path.isdir(step_dir):
    content = "unsealed-" + hashlib.sha256(repr(_stats(step_dir)).encode()).hexdigest()[:12]
  else:
    content = "missing"
  return f"{where}@{step}:{content}"


SETTINGS_FILE = "made_with.json"  # the settings a checkpoints folder's steps were trained with


def claim(directory: str, made_with: dict | None) -> bool:
  """Makes a checkpoints folder this run's to resume: records made_with (what the run's result
  depends on: its settings, start weights and inputs) in directory/made_with.json, and when the
  folder's steps were trained with other settings, moves it aside to <directory>.stale-<n> (said
  in one line) so training starts over instead of restoring a model the new settings did not make.
  A folder without the file (an older version's) is adopted as it is; one another stage trained
  (made_with's "stage") is a CheckpointError naming both. Process 0 moves and writes; returns
  whether it moved one aside (every process agrees)."""
  if made_with is None:
    return False
  from rlaif_jax import partitioning, records

  path = os.path.join(directory, SETTINGS_FILE)
  try:  # every process reads it, so every process stops alike
    recorded = records.read_json(path, None)
  except records.RecordsError:
    raise CheckpointError(
      f"{path} is not a JSON file (cut off or edited): delete it to resume these checkpoints as they are, or move "
      f"{directory} away to train anew"
    ) from None
  if recorded is not None and not (isinstance(recorded, dict) and isinstance(recorded.get("settings", {}), dict)):
    raise CheckpointError(f"{path} does not hold {{digest, settings}}: delete it, or move {directory} away")
  other = (recorded or {}).get("settings", {}).get("stage")
  if other and made_with.get("stage") and other != made_with["stage"]:
    raise CheckpointError(
      f"{directory} holds checkpoints that {other} trained; {made_with['stage']} would take them over: give "
      f"{made_with['stage']} a workdir of its own"
    )
  moved, failed = False, None
  if jax.process_index() == 0:
    try:
      moved = _claim(directory, records.digest(made_with), made_with, recorded)
    except OSError as e:  # told to every process below, so none waits for process 0
      failed = e
  if jax.process_count() > 1 and partitioning.agree(failed is not None) and failed is None:
    raise CheckpointError(f"process 0 could not record {path}; see its log")
  if failed is not None:
    raise failed
  return partitioning.agree(moved) if jax.process_count() > 1 else moved


def _claim(directory: str, want: str, made_with: dict, recorded: dict | None) -> bool:
  """Process 0's part of claim: moves other settings' checkpoints aside, records made_with."""
  from rlaif_jax import records

  if recorded is not None and recorded.get("digest") == want:
    return False
  if recorded is None and latest_step_dir(directory) is not None:
    logging.warning(
      "%s has checkpoints but no %s (an older version's, or deleted): what they were trained with cannot be "
      "checked; resuming them as they are (move the folder away to train anew)", directory, SETTINGS_FILE,
    )  # fmt: skip
    made_with = {**made_with, "adopted": True}  # these settings were not checked against the steps before
  moved = False
  if recorded is not None and os.path.isdir(directory):
    n = next(n for n in range(1, 1_000_000) if not os.path.exists(f"{directory}.stale-{n}"))
    os.replace(directory, f"{directory}.stale-{n}")
    moved = True
    logging.warning(
      "%s was trained with other settings (%s): moved it to %s.stale-%d; training from the start", directory,
      records.changed_settings(recorded.get("settings") or {}, made_with), os.path.basename(directory), n,
    )  # fmt: skip
  os.makedirs(directory, exist_ok=True)
  records.write_json(os.path.join(directory, SETTINGS_FILE), {"digest": want, "settings": made_with})
  return moved


READS_FILE = "reads.json"  # what the checkpoints' model was trained to read (data.encoder.reading)
ADAPTERS_FILE = "adapters.json"  # beside a LoRA run's checkpoints: its adapters' settings and base (models.source)


def _differences(recorded: dict, reading: dict) -> str:
  keys = sorted(set(recorded) | set(reading))
  return "; ".join(
    f"{k}: {recorded.get(k)!r} there, {reading.get(k)!r} here" for k in keys if recorded.get(k) != reading.get(k)
  )


def record_reading(directory: str, reading: dict) -> None:
  """Writes directory/reads.json (a checkpoints folder's): what its model reads. A folder that
  records another reading is refused (resuming it would train on ids it was not trained on)."""
  check_reading(directory, reading, required=False)
  if jax.process_index() != 0 or os.path.exists(os.path.join(directory, READS_FILE)):
    return
  _write_beside(directory, READS_FILE, reading)


def _write_beside(directory: str, name: str, obj: dict) -> None:
  """directory/name as JSON, atomically (a killed job leaves the old file or none)."""
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, name + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(directory, name))


def record_adapters(directory: str, adapters_of: dict | None) -> None:
  """Writes directory/adapters.json (a LoRA run's checkpoints folder's): the adapters' settings and
  the base they belong to (models.LoadedModel.adapters_of), so that other stages read them onto it.
  None: nothing (a run that trains every weight)."""
  if adapters_of is not None and jax.process_index() == 0:
    _write_beside(directory, ADAPTERS_FILE, adapters_of)


def check_reading(directory: str, reading: dict, required: bool = True) -> None:
  """Raises CheckpointError, naming both, when the checkpoints in directory were trained to read
  other ids than `reading` (another vocabulary, BOS or chat format). A folder without reads.json
  predates it: refused where the model reads BOS or a chat format (required), as its policy was
  trained without BOS."""
  path = os.path.join(directory, READS_FILE)
  if not os.path.exists(path):
    if required and (reading.get("bos") is not None or reading.get("chat_format")) and os.path.isdir(directory):
      raise CheckpointError(
        f"{directory} has no {READS_FILE}: it was trained before every path put BOS first (encoder 1), and this "
        f"model reads {reading}; train it again (its folder's settings changed, so the pipeline reruns it)"
      )
    return
  try:
    with open(path, encoding="utf-8") as f:
      recorded = json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
  if recorded != reading:
    raise CheckpointError(
      f"{directory} was trained to read other ids than it would be given here ({_differences(recorded, reading)}); "
      "load it with the vocabulary and chat_format it was trained with, or train it again"
    )


_FULL_DISK = ("No space left on device", "RESOURCE_EXHAUSTED: Error writing")


@contextlib.contextmanager
def _naming(where: str):
  """Re-raises a full disk met while orbax and tensorstore write as OSError(ENOSPC) naming the
  step folder: their own messages name a file only sometimes (a tensorstore write from its
  thread pool names none)."""
  try:
    yield
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT) or e.filename is not None:
      raise
    raise OSError(e.errno, os.strerror(e.errno), where) from e
  except Exception as e:
    if not any(said in str(e) for said in _FULL_DISK):
      raise
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where) from e


class Checkpointer:
  """A thin wrapper over orbax's CheckpointManager for one state pytree, adding checksums."""

  def __init__(self, directory: str, save_every: int = 1000, keep: int | None = 3):
    self.directory = os.path.abspath(directory)
    self.save_every = max(1, save_every)
    # The interval is applied here: orbax's own policy would also save the first step.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep)
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._unsealed: list[int] = []  # saved here, manifest not yet written
    self._corrupt: set[int] = set()  # skipped by restore: the next save of that step replaces them

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def latest_step(self) -> int | None:
    with _naming(self.directory):  # orbax may raise a background save's failure from any call
      return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    with _naming(self.directory):
      return list(self.manager.all_steps())

  def latest_good_step(self, problems: list[str] | None = None) -> int | None:
    """The newest step that passes its checksums; None when there is none. Corrupt steps are
    skipped with a warning naming their folder and first bad file, remembered (the next save of
    that step replaces it) and, when given, appended to problems."""
    for s in sorted(self.all_steps(), reverse=True):
      problem = step_problem(self.step_dir(s))
      if problem is None:
        return s
      logging.warning("checkpoint %s is corrupt: %s; skipping it", self.step_dir(s), problem)
      self._corrupt.add(s)
      if problems is not None:
        problems.append(f"step {s}: {problem}")
    return None

  def _seal(self, wait: bool) -> None:
    """Writes the manifests of this checkpointer's finished saves (all of them when wait)."""
    if wait:
      with _naming(self.step_dir(self._unsealed[-1]) if self._unsealed else self.directory):
        self.manager.wait_until_finished()
    elif not self._unsealed or self.manager.is_saving_in_progress():
      return
    for step in self._unsealed:
      if jax.process_index() == 0 and os.path.isdir(self.step_dir(step)):
        write_manifest(self.step_dir(step))
    self._unsealed = []

  def save(self, step: int, state, force: bool = False) -> bool:
    """Saves when step is on the interval (or force); returns whether it saved. A full disk met
    by any call here (orbax raises an earlier asynchronous save's failure from whichever call
    comes next) names the step folder being written."""
    with _naming(self.step_dir(self._unsealed[-1] if self._unsealed else step)):
      return self._save(step, state, force)

  def _save(self, step: int, state, force: bool) -> bool:
    self._seal(wait=False)
    if not force and step % self.save_every:
      return False
    if step in self._corrupt and step in self.manager.all_steps():
      logging.warning("replacing corrupt checkpoint %s", self.step_dir(step))
      self.manager.delete(step)
    self._corrupt.discard(step)
    if step in self.manager.all_steps():  # save's own naming covers these calls
      return False
    self._seal(wait=True)
    with _naming(self.step_dir(step)):
      saved = self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if saved:
      self._unsealed.append(step)
    return saved

  def restore(self, abstract_state, step: int | None = None):
    """Restores `step` (default: the newest good step) into the shapes and shardings of
    abstract_state.

    Each step is checked against its checksums.json before orbax reads it. Without `step`, a
    corrupt step is skipped with a warning naming its folder and first bad file, and the step
    before it is tried (a later save of the skipped step replaces it); CheckpointError when no
    step is good or `step` is corrupt. A step without checksums.json (an older version's, or
    one whose run stopped before its manifest was written) is trusted as orbax finalized it,
    with a warning; like every restore, its floating-point arrays must be finite, else
    CheckpointError (no earlier step is tried: a diverged run would diverge again).
    """
    problems = []
    if step is not None:
      problem = step_problem(self.step_dir(step))
      if problem is not None:
        raise CheckpointError(f"checkpoint {self.step_dir(step)} is corrupt: {problem}")
    else:
      if not self.all_steps():
        raise FileNotFoundError(f"no checkpoint found in {self.directory}")
      step = self.latest_good_step(problems)
      if step is None:
        raise CheckpointError(
          f"no usable checkpoint in {self.directory}: every step is corrupt ({'; '.join(problems)})"
        )
    state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    check_finite(state, self.step_dir(step))
    if problems:
      logging.warning("restored step %d of %s instead", step, self.directory)
    return state

  def wait(self) -> None:
    self._seal(wait=True)

  def close(self) -> None:
    self._seal(wait=True)
    with _naming(self.directory):
      self.manager.close()


def load_params(directory: str, abstract_params, step: int | None = None, key: str = "params"):
  """Restores only `key` (a model's parameters) of a saved train state into abstract_params'
  shapes and shardings, whatever topology it was saved on.

  directory is a trainer's checkpoints folder (e.g. runs/tiny_sft/checkpoints), given by the user;
  from an RL run's folder this loads the policy. The step (default: the latest) is checked like
  Checkpointer.restore's, but a corrupt one is a CheckpointError rather than a fallback: the
  parameters are a model to use, and an earlier step's would be a different model.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"checkpoint directory {directory!r} does not exist")
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint found in {directory}")
    step_dir = os.path.join(os.path.abspath(directory), str(step))
    problem = step_problem(step_dir)
    if problem is not None:
      raise CheckpointError(
        f"checkpoint {step_dir} is corrupt: {problem}; delete that folder to load the step before it, or name "
        "an earlier one (ModelSource.step)"
      )

    def restore(target):
      """The restored tree, or None when the checkpoint lacks some of target's arrays (a
      partial restore hands those back unfilled)."""
      restore_args = ocp.checkpoint_utils.construct_restore_args(target)
      args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
      try:
        out = manager.restore(step, args=args)[key]
      except (ValueError, KeyError):
        return None
      leaves = jax.tree_util.tree_leaves(out)
      return out if all(isinstance(x, jax.Array) for x in leaves) else None

    params = restore({key: abstract_params})
    if params is None:  # an RL run's state holds {"policy", "value"}: the policy is the model
      params = restore({key: {"policy": abstract_params}})
      params = None if params is None else params["policy"]
    if params is None:
      raise ValueError(
        f"checkpoint {directory} (step {step}) does not hold parameters of this model's shapes under {key!r} "
        "(another model config?)"
      )
    check_finite(params, step_dir)
    return params
  finally:
    manager.close()
