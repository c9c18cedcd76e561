"""Text from a policy: the one way responses are sampled, for every stage and the labeler.

`Generator` samples continuations of prompts in fixed-shape batches (batch_size rows of
max_prompt_len left-padded tokens, so the KV-cache sampler compiles once), with one key per
batch, so a job that resumes mid-way makes the same responses. Where a response ends is data,
a `StopRule`: EOS always; the first newline for TL;DR summaries; a text marker (the blank line
after a rationale, the next "\\n\\nHuman:" of a dialogue). Batches are placed from every
process's own rows and gathered back to the host, so a mesh may span processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from rlaif_jax import data, partitioning, sampling


@dataclasses.dataclass(frozen=True)
class StopRule:
  """Where a response ends, besides EOS."""

  at_newline: bool = False  # any token containing a newline ends it (TL;DR summaries), kept as its last token
  # A text marker that ends it (the next "\n\nHuman:" of a dialogue, the blank line after a
  # rationale): its tokens end with the one that completes the marker (kept, as a stop token is:
  # the policy learns to end its turn) and its text is cut before the marker.
  text_stop: str | None = None
  strip: bool = True  # surrounding whitespace is removed from the decoded text


def stop_ids(vocab, newline: bool) -> list[int]:
  """EOS, plus every token containing a newline when responses end at the first line."""
  ids = [vocab.eos_id]
  if newline:
    ids += [i for i in range(vocab.vocab_size) if i != vocab.eos_id and "\n" in vocab.decode([i])]
  return ids


def cut_responses(tokens, mask, stops, pad_id: int):
  """Ends each sampled response at its first stop token, kept as the last valid token.
  tokens, mask: [B, N] -> (tokens, mask, ended [B]); rows with no stop token keep their mask
  and have ended False (they hit the length cap)."""
  tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
  stop = np.isin(tokens, np.asarray(list(stops))) & mask
  ended = stop.any(axis=1)
  first = np.where(ended, np.argmax(stop, axis=1), tokens.shape[1])
  mask = mask & (np.arange(tokens.shape[1])[None, :] <= first[:, None])
  return np.where(mask, tokens, pad_id), mask, ended


def cut_at_text(tokens, mask, ended, decode, marker: str, pad_id: int):
  """Ends each response at the token whose text completes the first `marker`, kept as its last
  valid token. tokens, mask [B, N] (valid tokens first), ended [B]; decode(token ids) -> text.
  Rows whose text has no marker are unchanged; the others have ended True."""
  tokens, mask, ended = np.asarray(tokens), np.array(mask, bool), np.array(ended, bool)
  for r in range(len(tokens)):
    n = int(mask[r].sum())
    if marker not in decode(tokens[r, :n]):
      continue
    lo, hi = 1, n  # the fewest tokens whose text holds the marker: a prefix's text only grows
    while lo < hi:
      mid = (lo + hi) // 2
      lo, hi = (lo, mid) if marker in decode(tokens[r, :mid]) else (mid + 1, hi)
    mask[r, lo:] = False
    ended[r] = True
  return np.where(mask, tokens, pad_id), mask, ended


class Samples(NamedTuple):
  """One batch of responses, host arrays: [B, N] tokens and mask (up to and including the stop
  token), ended [B] (False when the length cap cut it), texts (decoded, stop rule applied)."""

  tokens: np.ndarray
  mask: np.ndarray
  ended: np.ndarray
  texts: list[str]


def prompt_width(mask: np.ndarray, smallest: int = 64) -> int:
  """The columns a batch of left-padded prompts [B, P] is sampled with: P halved while its longest
  prompt (and `smallest`) still fits, so a batch of short prompts neither prefills nor attends to
  the padding of the longest allowed one (150-token prompts under P = 448: 224 columns), and the
  sampler compiles for a few widths only (P, P/2, P/4, ...)."""
  longest = max(int(np.asarray(mask).sum(axis=1).max(initial=1)), smallest)
  width = mask.shape[1]
  while width // 2 >= longest:
    width //= 2
  return width


class Generator:
  """Samples responses from a model's parameters; see sample_arrays, sample and __call__."""

  def __init__(
    self,
    model,
    vocab,
    config: sampling.SamplingConfig,
    *,
    batch_size: int,
    max_prompt_len: int | None = None,
    stop: StopRule = StopRule(),
    mesh=None,
    rules=partitioning.DEFAULT_RULES,
  ):
    self.model, self.vocab, self.stop = model, vocab, stop
    self.config, self.ids = config, sampling.TokenIds.of(vocab)
    self.batch_size, self.max_prompt_len = batch_size, max_prompt_len
    self.mesh = mesh or partitioning.make_mesh()
    self.rules = rules
    partitioning.check_batch_fits(batch_size, self.mesh)
    self.stops = stop_ids(vocab, stop.at_newline)
    self._stop_set = frozenset(self.stops)  # read per row, and per step of cut_at_text's search
    self.sampler = sampling.cached_sampler(model, config, self.ids)
    self.truncated = 0  # prompts whose start was cut to fit max_prompt_len

  def _text(self, tokens) -> str:
    """The text of response tokens, stop tokens left out."""
    return self.vocab.decode([int(t) for t in tokens if int(t) not in self._stop_set])

  def decode(self, tokens, mask) -> list[str]:
    texts = []
    for row, keep in zip(tokens, mask):
      text = self._text(row[np.asarray(keep, bool)])
      if self.stop.text_stop:
        text = text.split(self.stop.text_stop)[0]
      texts.append(text.strip() if self.stop.strip else text)
    return texts

  def sample_arrays(self, params, tokens: np.ndarray, mask: np.ndarray, key, repeats: int = 1) -> Samples:
    """Responses to left-padded prompts tokens, mask [B, P] (host arrays, B = batch_size).

    repeats: the rows come in groups of that many copies of one prompt (several samples per
    prompt), so each prompt is prefilled once, where the mesh can split the groups."""
    if repeats > 1 and (len(tokens) // repeats) % partitioning.data_parallel_size(self.mesh) == 0:
      tokens, mask = tokens[::repeats], mask[::repeats]
    else:
      repeats = 1
    width = prompt_width(mask)  # the columns of left padding no prompt reaches are left out
    tokens, mask = tokens[:, -width:], mask[:, -width:]
    with partitioning.axis_rules(self.mesh, self.rules):
      batch = partitioning.put_batch({"tokens": tokens, "mask": mask}, self.mesh, self.rules)
      out = self.sampler(params, batch["tokens"], batch["mask"], key, repeats=repeats)
      toks, keep, ended = cut_responses(
        partitioning.to_host(out.tokens), partitioning.to_host(out.mask), self.stops, self.vocab.pad_id
      )
    if self.stop.text_stop:
      toks, keep, ended = cut_at_text(toks, keep, ended, self._text, self.stop.text_stop, self.vocab.pad_id)
    return Samples(toks, keep, ended, self.decode(toks, keep))

  def pad_prompts(self, contexts: Sequence[data.encoder.Context]) -> tuple[np.ndarray, np.ndarray]:
    """Up to batch_size encoded prompts (data.encoder.context) -> tokens, mask [batch_size,
    max_prompt_len], left-padded; a longer prompt keeps its head (BOS, system turn) and its end."""
    rows = []
    for c in contexts:
      ids, cut = data.encoder.cut_context(c, self.max_prompt_len) if self.max_prompt_len else (list(c.ids), False)
      self.truncated += cut
      rows.append(ids)
    rows += [[self.vocab.pad_id]] * (self.batch_size - len(rows))
    return sampling.left_pad(rows, self.vocab.pad_id, self.max_prompt_len)

  def __call__(self, params, prompts: Sequence[str], seed: int, batch_offset: int = 0) -> list[dict]:
    """[{response, length (tokens, stop token included), ended}] per text prompt; batch b uses
    the key fold_in(PRNGKey(seed), batch_offset + b)."""
    out = []
    ids = [data.encoder.context(self.vocab, p) for p in prompts]
    for b, start in enumerate(range(0, len(ids), self.batch_size)):
      chunk = ids[start : start + self.batch_size]
      key = jax.random.fold_in(jax.random.PRNGKey(seed), batch_offset + b)
      samples = self.sample_arrays(params, *self.pad_prompts(chunk), key)
      for j in range(len(chunk)):
        out.append(
          {"response": samples.texts[j], "length": int(samples.mask[j].sum()), "ended": bool(samples.ended[j])}
        )
    return out
