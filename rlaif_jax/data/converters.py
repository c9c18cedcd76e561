"""Feature converters: tokenized examples -> fixed-shape numpy arrays for the trainers.

Every row is cut by data.encoder.fit, the one rule: a context keeps its head (an example's
`head`: BOS, a chat format's system turn) and loses tokens from the left after it, so its end
(the 'TL;DR:' or 'Assistant:' cue) survives; a response is cut at its end only when it would
leave the context fewer than `min_context` tokens after its head. Each row is fitted on its
own. Every converter returns (arrays, stats) with the truncation counts.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

import numpy as np

from rlaif_jax.data.encoder import MIN_CONTEXT, Context, cut_context, fit

Example = Mapping[str, np.ndarray]


def _ids(x) -> list[int]:
  return [int(t) for t in np.asarray(x).reshape(-1)]


def _context(ex: Example) -> Context:
  return Context(_ids(ex["inputs"]), int(ex.get("head", 0)))


def sft_features(examples: Sequence[Example], max_len: int, pad_id: int = 0, min_context: int = MIN_CONTEXT):
  """inputs + targets in one row: tokens, input_mask, loss_mask, each [N, max_len].

  loss_mask marks the targets (their EOS included); rows are right-padded.
  """
  n = len(examples)
  tokens = np.full((n, max_len), pad_id, np.int32)
  input_mask = np.zeros((n, max_len), bool)
  loss_mask = np.zeros((n, max_len), bool)
  stats = {"examples": n, "truncated_inputs": 0, "truncated_targets": 0}
  for i, ex in enumerate(examples):
    context, target, cut_c, cut_t = fit(_context(ex), _ids(ex["targets"]), max_len, min_context)
    stats["truncated_targets"] += cut_t
    stats["truncated_inputs"] += cut_c
    row = context + target
    tokens[i, : len(row)] = row
    input_mask[i, : len(row)] = True
    loss_mask[i, len(context) : len(row)] = True
  return {"tokens": tokens, "input_mask": input_mask, "loss_mask": loss_mask}, stats


def pack_sft_features(arrays: Mapping[str, np.ndarray], pad_id: int = 0) -> tuple[dict, dict]:
  """sft_features' rows packed several to a row, so a batch carries fewer padding tokens.

  Best fit, longest first: each example (its real tokens, ties kept in order) goes to the
  fullest row it still fits in, else to a new row; the packing is a pure function of the
  lengths. Returns tokens, input_mask, loss_mask [M, L] as before, plus segment_ids [M, L]
  (1, 2, ... for the examples of a row in order, 0 on padding), and stats: examples, rows, and
  fill (real tokens / M * L). Attention stays inside a segment, positions restart in each
  (models.segment_positions) and no target crosses into the next (Transformer, SFTObjective),
  so a packed batch's loss is that of its examples padded one to a row.
  """
  input_mask = arrays["input_mask"]
  n, width = input_mask.shape
  lengths = input_mask.sum(axis=1)
  if np.any(input_mask != (np.arange(width)[None, :] < lengths[:, None])):
    raise ValueError("pack_sft_features: rows must be right-padded (input_mask True, then False)")
  sizes = lengths.tolist()
  free: list[tuple[int, int]] = []  # (room left, row), sorted: bisect finds the fullest row that fits
  rows: list[list[int]] = []
  for i in sorted(range(n), key=lambda i: (-sizes[i], i)):
    at = bisect.bisect_left(free, (sizes[i], -1))
    if at == len(free):
      rows.append([])
      room, row = width, len(rows) - 1
    else:
      room, row = free.pop(at)
    rows[row].append(i)
    if room > sizes[i]:
      bisect.insort(free, (room - sizes[i], row))
  shape = (len(rows), width)
  out = {"tokens": np.full(shape, pad_id, np.int32), "input_mask": np.zeros(shape, bool)}
  out |= {"loss_mask": np.zeros(shape, bool), "segment_ids": np.zeros(shape, np.int32)}
  for r, members in enumerate(rows):
    start = 0
    for segment, i in enumerate(members, 1):
      span = slice(start, start + sizes[i])
      for key in ("tokens", "input_mask", "loss_mask"):
        out[key][r, span] = arrays[key][i, : sizes[i]]
      out["segment_ids"][r, span] = segment
      start = span.stop
  fill = sum(sizes) / max(len(rows) * width, 1)
  return out, {"examples": n, "rows": len(rows), "fill": round(fill, 4)}


def responses_features(
  examples: Sequence[Example], max_len: int, keys: Sequence[str], pad_id: int = 0, min_context: int = MIN_CONTEXT
):
  """K responses after the same context: tokens, input_mask, response_mask [N, K, max_len],
  valid [N, K] (False where an example lacks a response), human_choice [N] (-1 unknown).
  Each row is the one sft_features makes of its (context, response): a reward model reads a
  response the same way in a training pair and when RL scores it.
  """
  n, k = len(examples), len(keys)
  tokens = np.full((n, k, max_len), pad_id, np.int32)
  input_mask = np.zeros((n, k, max_len), bool)
  response_mask = np.zeros((n, k, max_len), bool)
  valid = np.zeros((n, k), bool)
  choice = np.full((n,), -1, np.int32)
  stats = {"examples": n, "truncated_inputs": 0, "truncated_responses": 0}
  for i, ex in enumerate(examples):
    cut_any = False
    for j, key in enumerate(keys):
      if ex.get(key) is None:
        continue
      context, r, cut_c, cut_r = fit(_context(ex), _ids(ex[key]), max_len, min_context)
      stats["truncated_responses"] += cut_r
      cut_any |= cut_c
      row = context + r
      tokens[i, j, : len(row)] = row
      input_mask[i, j, : len(row)] = True
      response_mask[i, j, len(context) : len(row)] = True
      valid[i, j] = True
    stats["truncated_inputs"] += cut_any
    choice[i] = int(ex.get("human_choice", -1))
  arrays = {"tokens": tokens, "input_mask": input_mask, "response_mask": response_mask, "valid": valid}
  return {**arrays, "human_choice": choice}, stats


def pair_features(examples: Sequence[Example], max_len: int, pad_id: int = 0, min_context: int = MIN_CONTEXT):
  """Both responses of a pair after the same context: tokens, input_mask, response_mask
  [N, 2, max_len] and human_choice [N] (-1 when unknown)."""
  arrays, stats = responses_features(examples, max_len, ("response_a", "response_b"), pad_id, min_context)
  del arrays["valid"]
  return arrays, stats


def prompt_features(examples: Sequence[Example], max_len: int, pad_id: int = 0, min_context: int = MIN_CONTEXT):
  """Left-padded prompts for sampling (cut as data.encoder.cut_context cuts): tokens, input_mask
  [N, max_len]. (min_context unused.)"""
  del min_context
  n = len(examples)
  tokens = np.full((n, max_len), pad_id, np.int32)
  input_mask = np.zeros((n, max_len), bool)
  stats = {"examples": n, "truncated_inputs": 0}
  for i, ex in enumerate(examples):
    context, cut = cut_context(_context(ex), max_len)
    stats["truncated_inputs"] += cut
    if context:
      tokens[i, max_len - len(context) :] = context
      input_mask[i, max_len - len(context) :] = True
  return {"tokens": tokens, "input_mask": input_mask}, stats


CONVERTERS = {"sft": sft_features, "pairs": pair_features, "prompts": prompt_features}
