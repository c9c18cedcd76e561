"""The `export_hf` stage: a trained policy or reward model as a Hugging Face folder.

Writes `out/` as transformers reads it (models.export): config.json (Gemma3ForCausalLM,
LlamaForCausalLM or Qwen2ForCausalLM; the family's *ForSequenceClassification for a reward
model), model.safetensors (sharded with an index above max_shard_gb), the tokenizer
(tokenizer.model or tokenizer.json, tokenizer_config.json with the BOS setting and chat
template, special_tokens_map.json), generation_config.json (EOS and end-of-turn), README.md (a
model card: base model, method, data, the run's numbers, where its report is) and, for a reward
model, reward_stats.json (the head's bias and the statistics RL normalizes rewards with).

LoRA checkpoints are exported merged (their base read as recorded), or with `peft` as a PEFT
adapter folder for their base (adapter_config.json, adapter_model.safetensors, the tokenizer and
the model card). The folder is written beside
`out` under a temporary name and renamed when complete; a bad setting is an error before anything
is read or written.
"""

from __future__ import annotations

import logging
import os
import shutil

import jax
import numpy as np

from rlaif_jax import models, partitioning, records
from rlaif_jax.checkpoints import SETTINGS_FILE, Checkpointer, CheckpointError
from rlaif_jax.models import export
from rlaif_jax.reward import STATS_FILE
from rlaif_jax.stages.base import stage


def _check_out(out) -> str:
  if not isinstance(out, str) or not out.strip():
    raise ValueError(f"run_export_hf.out (OUT)={out!r}: name the folder to write")
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    what = "a file" if not os.path.isdir(out) else "a folder that is not empty"
    raise FileExistsError(
      f"run_export_hf.out (OUT)={out!r} is {what}; name a new or empty folder (nothing was written)"
    )
  return out


def pick_step(checkpoint: str, step: int | None) -> int:
  """The step to export: `step` when the folder has it, else (None) its latest good one; errors
  naming the setting for a folder that is not a trainer's checkpoints or a step it lacks."""
  where = f"run_export_hf.source.checkpoint (SFT)={checkpoint!r}"
  if not os.path.isdir(checkpoint):
    raise FileNotFoundError(f"{where}: no such folder")
  checkpointer = Checkpointer(checkpoint, keep=None)
  try:
    steps = sorted(checkpointer.all_steps())
    if not steps:
      raise CheckpointError(
        f"{where} holds no checkpoint steps: name a trainer's checkpoints folder (e.g. runs/my_sft/checkpoints)"
      )
    if step is not None:
      if int(step) not in steps:
        raise CheckpointError(f"run_export_hf.source.step (STEP)={step}: {checkpoint} has steps {steps}")
      return int(step)
    good = checkpointer.latest_good_step()
    if good is None:
      raise CheckpointError(f"{where}: every step is corrupt (see the warnings)")
    return good
  finally:
    checkpointer.close()


def _run_folder(checkpoint: str) -> str:
  """The run folder a trainer's checkpoints folder is in (its summary, report, reward statistics)."""
  return os.path.dirname(os.path.normpath(os.path.abspath(checkpoint)))


def _made_with(checkpoint: str) -> dict:
  """The settings a checkpoints folder records (made_with.json's), {} when it records none."""
  return (records.read_json(os.path.join(checkpoint, SETTINGS_FILE), None) or {}).get("settings") or {}


def is_reward_model(checkpoint: str | None) -> bool:
  """Whether a checkpoints folder holds a reward model: the rm stage trained it, or its run
  folder has the reward statistics."""
  if not checkpoint:
    return False
  return _made_with(checkpoint).get("stage") == "run_rm" or os.path.exists(
    os.path.join(_run_folder(checkpoint), STATS_FILE)
  )


@stage
def run_export_hf(
  out: str,
  source: models.ModelSource,
  dtype: str = "bfloat16",
  reward: bool | None = None,
  max_shard_gb: float = 5.0,
  mesh_shape: dict | None = None,
  peft: bool = False,
  peft_base: str | None = None,
) -> dict:
  """Writes source (a pretrained model, or a trainer's checkpoint of it at source.step, default
  its latest good step) to `out` as a Hugging Face folder in dtype ('bfloat16' or 'float32').
  reward: export as a reward model (sequence classification); None: when the rm stage trained
  the checkpoint. mesh_shape: where the weights are read to (default: sharded over every device,
  so that host devices of one machine hold one copy between them, not one each). peft: a LoRA
  run's adapters alone, as a PEFT folder for the base model transformers loads from peft_base (a
  folder or hub name; default the pretrained source when it is a folder)."""
  out = _check_out(out)
  if dtype not in export.DTYPES:
    raise ValueError(f"run_export_hf.dtype (DTYPE)={dtype!r}; one of {sorted(export.DTYPES)}")
  if source.checkpoint:
    source = source.replace(step=pick_step(source.checkpoint, source.step))
  reward = is_reward_model(source.checkpoint) if reward is None else bool(reward)
  peft_base = _check_peft(source, reward, peft_base) if peft else None
  mesh = partitioning.make_mesh(mesh_shape or {"fsdp": -1})
  kind = export.family(
    source.architecture(mesh)
  )  # refuses a config no transformers class computes, before any weights load
  loaded, lora = source.adapters(mesh) if peft else (source.load(mesh, scalar_head=reward), None)
  config = loaded.model.config
  write = partitioning.is_main_process()
  temp = os.path.join(os.path.dirname(os.path.abspath(out)), f".{os.path.basename(os.path.abspath(out))}.exporting")
  if write:
    shutil.rmtree(temp, ignore_errors=True)
    os.makedirs(temp)
  try:
    if peft:
      summary = _write_adapters(temp if write else None, source, loaded, lora, kind, dtype, peft_base)
    else:
      summary = _write(temp if write else None, source, loaded, config, kind, dtype, reward, max_shard_gb)
    if write:
      if os.path.isdir(out):
        os.rmdir(out)  # empty (checked above)
      os.rename(temp, out)
  except BaseException:
    if write:
      shutil.rmtree(temp, ignore_errors=True)
    raise
  logging.info("exported %s to %s (%s, %s)", source.name, out, summary["architecture"], dtype)
  return {"out": os.path.abspath(out), **summary}


def _check_peft(source: models.ModelSource, reward: bool, base: str | None) -> str:
  """The base model a PEFT folder names, or an error naming the setting before anything loads."""
  if not source.checkpoint:
    raise ValueError("run_export_hf.peft (PEFT)=True needs a LoRA run's checkpoints (SFT); SFT is None")
  if reward:
    raise ValueError(
      "run_export_hf.peft (PEFT)=True: a reward model's adapters are exported merged (its scalar head trains in "
      "full, which an adapter folder does not hold); leave PEFT False"
    )
  if base is None and source.pretrained and os.path.isdir(source.pretrained):
    base = os.path.abspath(source.pretrained)
  if not base:
    raise ValueError(
      f"run_export_hf.peft_base (PEFT_BASE): name the base model's Hugging Face folder or hub name for "
      f"{source.pretrained or 'the random init'} (export it first with this recipe and SFT=None)"
    )
  return base


def _by_path(params) -> dict:
  """params' arrays by their path of names (("blocks_0", "attn", "q"): array)."""
  return {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _write_adapters(directory, source, loaded, lora, kind, dtype, base) -> dict:
  """A PEFT folder into directory (None: only take part in gathering the adapters)."""
  config = loaded.model.config
  flat = _by_path(loaded.params)
  entries = export.adapter_names(config, lora.targets)
  shapes = [(name, export.adapter_shape(path, flat[path].shape)) for name, path in entries]
  arrays = (export.adapter_tensor(path, partitioning.to_host(flat[path]), dtype) for _, path in entries)
  target = None if directory is None else os.path.join(directory, export.ADAPTER_WEIGHTS)
  export.write_safetensors(target, shapes, arrays, dtype)
  summary = {"architecture": f"PEFT LoRA adapters for {export.CLASSES[kind][0]}", "dtype": dtype}
  summary |= {"files": [export.ADAPTER_WEIGHTS], "tensors": len(entries), "peft_base": base}
  if directory is None:
    return summary
  export.tokenizer_files(loaded.vocab, directory, kind, config.max_len)
  settings = export.adapter_config(config, lora.rank, lora.alpha, lora.targets, base)
  records.write_json(os.path.join(directory, export.ADAPTER_CONFIG), settings, indent=1)
  with open(os.path.join(directory, "README.md"), "w", encoding="utf-8") as f:
    f.write(model_card(source, export.CLASSES[kind][0], dtype, False, base))
  return summary


def _write(directory, source, loaded, config, kind, dtype, reward, max_shard_gb) -> dict:
  """Every file of the folder into directory (None: only take part in gathering the weights)."""
  flat = _by_path(loaded.params)
  entries = export.tensor_names(config, reward)
  shapes = [(name, export.file_shape(path, config)) for name, path in entries]
  by_name = dict(entries)

  def tensor(name):
    path = by_name[name]
    return export.file_tensor(path, partitioning.to_host(flat[path]), config, dtype)

  files = export.write_weights(directory, shapes, tensor, dtype, int(max_shard_gb * 1024**3))
  bias = float(np.asarray(partitioning.to_host(flat[("score_bias",)]))) if reward else None  # every process
  summary = {"architecture": export.CLASSES[kind][1 if reward else 0], "dtype": dtype, "files": files}
  summary |= {"tensors": len(entries)}
  if directory is None:
    return summary
  tokens = export.tokenizer_files(loaded.vocab, directory, kind, config.max_len)
  hf = export.hf_config(config, tokens, dtype, reward)
  records.write_json(os.path.join(directory, "config.json"), hf, indent=1)
  records.write_json(os.path.join(directory, "generation_config.json"), export.generation_config(tokens), indent=1)
  if reward:
    stats = (
      records.read_json(os.path.join(_run_folder(source.checkpoint), STATS_FILE), None) if source.checkpoint else None
    )
    records.write_json(os.path.join(directory, STATS_FILE), {**(stats or {}), "score_bias": bias})
  with open(os.path.join(directory, "README.md"), "w", encoding="utf-8") as f:
    f.write(model_card(source, hf["architectures"][0], dtype, reward))
  return summary


def _run_facts(checkpoint: str | None) -> tuple[str | None, dict, dict, str | None]:
  """(stage that trained it, its settings, the run's summary, its report's path) of a checkpoint."""
  if not checkpoint:
    return None, {}, {}, None
  run, made = _run_folder(checkpoint), _made_with(checkpoint)
  summary = records.read_json(os.path.join(run, "summary.json"), None) or {}
  report = next(
    (p for p in (os.path.join(run, "report.md"), os.path.join(os.path.dirname(run), "report.md")) if os.path.exists(p)),
    None,
  )
  return made.get("stage"), made.get("settings") or {}, summary, report


METHODS = {
  "run_sft": "supervised fine-tuning",
  "run_rm": "a reward model distilled from preference labels",
  "run_rl": "reinforcement learning from AI feedback (REINFORCE family, KL to the SFT policy)",
  "run_dpo": "DPO/IPO on AI preference labels",
  "run_rrhf": "RRHF (ranking responses by reward)",
}


def model_card(
  source: models.ModelSource, architecture: str, dtype: str, reward: bool, peft_base: str | None = None
) -> str:
  """README.md: what the model is, what made it, its run's numbers and where its report is (for
  a PEFT folder, the base its adapters go on)."""
  stage_name, settings, summary, report = _run_facts(source.checkpoint)
  base = source.pretrained or "a random initialization (no pretrained weights)"
  task = str(settings.get("task") or settings.get("prompts") or "not recorded").strip("'\"")  # gin quotes strings
  numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
  lines = [
    "---",
    f"library_name: {'peft' if peft_base else 'transformers'}",
    *([f"base_model: {peft_base}"] if peft_base else []),
    f"pipeline_tag: {'text-classification' if reward else 'text-generation'}",
    "tags: [rlaif_jax, rlaif]",
    "---",
    "",
    f"# {source.name}",
    "",
    f"Exported by rlaif_jax as `{architecture}` ({dtype})"
    + (f": LoRA adapters (PEFT) for the base model `{peft_base}`." if peft_base else "."),
    "",
    f"- Base model: {base}",
    f"- Method: {METHODS.get(stage_name, stage_name or 'none (the pretrained weights as loaded)')}",
    f"- Data: {task}",
    f"- Checkpoint: {os.path.abspath(source.checkpoint) + f' (step {source.step})' if source.checkpoint else 'none'}",
    f"- Report: {report or 'none found beside the checkpoint'}",
  ]
  if numbers:
    lines += ["", "## The run's numbers", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in numbers.items()]
  if reward:
    lines += [
      "",
      "## Scores",
      "",
      "The reward of a (context, response) is the classification logit at the last token (the response's",
      "EOS) plus `score_bias` from reward_stats.json; RL standardizes it with that file's mean and std.",
    ]
  return "\n".join(lines) + "\n"
