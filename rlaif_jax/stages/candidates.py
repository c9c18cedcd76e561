"""The `candidates` stage: two sampled responses per prompt from a policy, for the AI labeler
(the paper's step 2). Appends per batch of prompts to candidates.jsonl and resumes by id; the
key of each batch is fixed, so a resumed job writes the same pairs."""

from __future__ import annotations

import dataclasses
import logging
import os

from rlaif_jax import data, generation, models, partitioning, records, sampling, trainer
from rlaif_jax.stages.base import stage


@stage
def run_candidates(
  workdir: str,
  policy: models.ModelSource,
  task: str = "tldr_prompts",
  split: str = "train",
  limit: int | None = None,
  sampling_config: sampling.SamplingConfig = sampling.SamplingConfig(max_new_tokens=48, temperature=1.0),
  stop: generation.StopRule = generation.StopRule(at_newline=True),
  max_prompt_len: int = 384,
  batch_size: int = 16,
  mesh_shape: dict | None = None,
  seed: int = 0,
) -> dict:
  """Two sampled responses per prompt -> <workdir>/candidates.jsonl {id, input, response_a,
  response_b}, the candidates format the label and rm stages read."""
  from tqdm.auto import tqdm

  examples = data.load_examples(task, split, limit)
  if not examples:
    raise ValueError(f"run_candidates: task {task!r} split {split!r} has no prompts")
  ids = [f"{task}/{split}/{i}" for i in range(len(examples))]
  mesh = partitioning.make_mesh(mesh_shape)
  loaded = policy.load(mesh)
  gen = generation.Generator(
    loaded.model, loaded.vocab, sampling_config, batch_size=batch_size, max_prompt_len=max_prompt_len, stop=stop,
    mesh=mesh,
  )  # fmt: skip
  made_with = {
    "policy": policy.prompted_identity, "task": task, "split": split, "sampling": sampling_config.decides(),
    "stop": dataclasses.asdict(stop), "max_prompt_len": max_prompt_len, "batch_size": batch_size, "seed": seed,
  }  # fmt: skip
  content = {
    i: records.digest({"input": ex["inputs"]}) for i, ex in zip(ids, examples)
  }  # an edited prompt: sampled anew
  out = records.Records(os.path.join(workdir, "candidates.jsonl"), made_with, content)
  main = partitioning.is_main_process()
  bar = tqdm(total=len(examples), initial=len(out.done), desc="candidates", unit="prompt", disable=not main)
  with out, trainer.PreemptionFlag("finishing this batch of prompts") as preemption:
    for b, start in enumerate(range(0, len(examples), batch_size)):
      if preemption.agreed():
        raise trainer.Preempted(len(out.done), f"saved {len(out.done)} candidate pairs to {out.path}")
      chunk = range(start, min(start + batch_size, len(examples)))
      if all(ids[i] in out.done for i in chunk):
        continue
      prompts = [examples[i]["inputs"] for i in chunk]
      first, second = gen(loaded.params, prompts, seed, 2 * b), gen(loaded.params, prompts, seed, 2 * b + 1)
      out.append(
        {"id": ids[i], "input": examples[i]["inputs"], "response_a": a["response"], "response_b": c["response"]}
        for i, a, c in zip(chunk, first, second)
        if ids[i] not in out.done
      )
      bar.update(len(chunk))
  bar.close()
  identical = sum(r["response_a"] == r["response_b"] for r in out.records)
  logging.info("candidates: %d pairs (%d identical) -> %s", len(out.records), identical, out.path)
  return {
    "candidates": out.path,
    "pairs": len(out.records),
    "identical_pairs": identical,
    "prompts_truncated": gen.truncated,
  }
