"""Generating responses from a policy checkpoint, and the `candidates` stage built on it.

`Generator` samples responses to text prompts in fixed-shape batches (batch_size rows of
max_prompt_len left-padded tokens, so the sampler compiles once) with a key per batch, so a
job that resumes mid-way makes the same responses. Responses end at EOS, or at the first
newline for TL;DR-style summaries. The `candidates` stage writes pairs of SFT samples per
prompt for the AI labeler (the paper's step 2), appending per batch and resuming by id.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence

import jax
import numpy as np

from rlaif_jax import models, partitioning, rl, sampling
from rlaif_jax.labeling.labeler import load_model_params
from rlaif_jax.stages.label import read_done
from rlaif_jax.stages.scorers import load_examples, vocabulary


def to_host(x) -> np.ndarray:
  """A global array's values on every process."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def local_rows(batch: dict, n: int) -> dict:
  """This process's rows of a global batch of n rows."""
  return {k: v[partitioning.process_slice(n)] for k, v in batch.items()}


def stop_ids(vocab, newline: bool) -> list[int]:
  """EOS, plus every token containing a newline when responses end at the first line."""
  ids = [vocab.eos_id]
  if newline:
    ids += [i for i in range(vocab.vocab_size) if i != vocab.eos_id and "\n" in vocab.decode([i])]
  return ids


def decode_responses(vocab, tokens, mask, stops) -> list[str]:
  stop = set(stops)
  return [vocab.decode([int(t) for t, m in zip(row, keep) if m and t not in stop]) for row, keep in zip(tokens, mask)]


class Generator:
  """Samples one response per text prompt from a policy; see __call__."""

  def __init__(
    self,
    model: models.Transformer,
    params,
    vocab,
    config: sampling.SamplingConfig,
    *,
    max_prompt_len: int,
    batch_size: int,
    stop_at_newline: bool = False,
    mesh=None,
    rules=partitioning.DEFAULT_RULES,
  ):
    self.model, self.params, self.vocab = model, params, vocab
    self.config = dataclasses.replace(config, eos_id=vocab.eos_id, pad_id=vocab.pad_id)
    self.max_prompt_len, self.batch_size = max_prompt_len, batch_size
    self.mesh = mesh or partitioning.make_mesh()
    self.rules = rules
    partitioning.check_batch_fits(batch_size, self.mesh)
    self.stops = stop_ids(vocab, stop_at_newline)
    self.sampler = sampling.cached_sampler(model, self.config)
    self.truncated = 0

  def __call__(self, prompts: Sequence[str], seed: int, batch_offset: int = 0) -> list[dict]:
    """[{response, length (tokens, stop token included), ended}] per prompt; batch b uses the
    key fold_in(PRNGKey(seed), batch_offset + b)."""
    out = []
    ids = [list(self.vocab.encode(p)) for p in prompts]
    self.truncated += sum(len(i) > self.max_prompt_len for i in ids)
    with partitioning.axis_rules(self.mesh, self.rules):
      for b, start in enumerate(range(0, len(ids), self.batch_size)):
        chunk = ids[start : start + self.batch_size]
        rows = chunk + [[self.vocab.pad_id]] * (self.batch_size - len(chunk))
        toks, mask = sampling.left_pad(rows, self.vocab.pad_id, self.max_prompt_len)
        batch = partitioning.shard_batch(local_rows({"t": toks, "m": mask}, self.batch_size), self.mesh, self.rules)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), batch_offset + b)
        sample = self.sampler(self.params, batch["t"], batch["m"], key)
        tokens, keep, ended = rl.cut_responses(
          to_host(sample.tokens), to_host(sample.mask), self.stops, self.vocab.pad_id
        )
        texts = decode_responses(self.vocab, tokens, keep, self.stops)
        for j in range(len(chunk)):
          out.append({"response": texts[j].strip(), "length": int(keep[j].sum()), "ended": bool(ended[j])})
    return out


def run_candidates(
  workdir: str,
  model_config: models.TransformerConfig,
  policy_checkpoint: str | None = None,
  task: str = "tldr_prompts",
  split: str = "train",
  limit: int | None = None,
  sampling_config: sampling.SamplingConfig = sampling.SamplingConfig(max_new_tokens=48, temperature=1.0),
  stop_at_newline: bool = True,
  max_prompt_len: int = 384,
  batch_size: int = 16,
  mesh_shape: dict | None = None,
  seed: int = 0,
  pretrained: str | None = None,
) -> dict:
  """Two sampled responses per prompt -> <workdir>/candidates.jsonl {id, input, response_a,
  response_b}, the candidates format the label and rm stages read. Appends per batch of
  prompts; a rerun skips prompts already written."""
  from tqdm.auto import tqdm

  os.makedirs(workdir, exist_ok=True)
  examples = load_examples(task, split, limit)
  if not examples:
    raise ValueError(f"run_candidates: task {task!r} split {split!r} has no prompts")
  ids = [f"{task}/{split}/{i}" for i in range(len(examples))]
  mesh = partitioning.make_mesh(mesh_shape)
  vocab = vocabulary(pretrained)
  model = models.Transformer(model_config)
  gen = Generator(
    model,
    load_model_params(model, mesh, policy_checkpoint, seed),
    vocab,
    sampling_config,
    mesh=mesh,
    max_prompt_len=max_prompt_len,
    batch_size=batch_size,
    stop_at_newline=stop_at_newline,
  )
  path = os.path.join(workdir, "candidates.jsonl")
  done = {r["id"] for r in read_done(path)}
  is_main = jax.process_index() == 0
  bar = tqdm(total=len(examples), initial=len(done), desc="candidates", unit="prompt", disable=not is_main)
  with open(path, "a", encoding="utf-8") as f:
    for b, start in enumerate(range(0, len(examples), batch_size)):
      chunk = range(start, min(start + batch_size, len(examples)))
      if all(ids[i] in done for i in chunk):
        continue
      prompts = [examples[i]["inputs"] for i in chunk]
      first, second = gen(prompts, seed, 2 * b), gen(prompts, seed, 2 * b + 1)
      if is_main:
        for i, a, c in zip(chunk, first, second):
          f.write(
            json.dumps(
              {"id": ids[i], "input": examples[i]["inputs"], "response_a": a["response"], "response_b": c["response"]}
            )
            + "\n"
          )
        f.flush()
      bar.update(len(chunk))
  bar.close()
  records = read_done(path)
  identical = sum(r["response_a"] == r["response_b"] for r in records)
  logging.info("candidates: %d pairs (%d identical) -> %s", len(records), identical, path)
  return {"candidates": path, "pairs": len(records), "identical_pairs": identical, "prompts_truncated": gen.truncated}
