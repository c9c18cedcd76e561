"""The AI labeler: an LLM scores which of two responses is better, or rates one from 1 to 10.

`Labeler` is the one code path for every caller (labeling jobs, direct-RLAIF rewards,
AI-judged win rates). Prompts are batched into fixed shapes (batch_size rows, lengths rounded
up to a bucket) so a few compiled functions serve a whole job; parameters and batches are
sharded with the training mesh machinery.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlaif_jax import batched, generation, models, partitioning, sampling
from rlaif_jax.labeling import prompts as P
from rlaif_jax.labeling import scoring, tokens

ORDERS = ("ab", "ba")


class Labeler:
  """Scores answers after prompts with a decoder; see label_pairs and direct_scores."""

  SHARE_MIN_BATCHES = 3  # a shared prefix is computed once where the prompts fill this many batches

  def __init__(
    self,
    model: models.Transformer,
    params,
    vocab,
    *,
    name: str = "labeler",
    max_len: int = 1024,
    batch_size: int = 8,
    length_bucket: int = 64,
    mesh=None,
    rules=partitioning.DEFAULT_RULES,
    chat=None,
    share_prefix: int = 32,
  ):
    self.model, self.vocab, self.name = model, vocab, name
    # Prompts whose first share_prefix or more tokens are the same (the preamble, exemplars) have
    # those tokens' keys and values computed once per call and read from a cache by every batch
    # (single-token answers); 0 computes every prompt whole.
    self.share_prefix = share_prefix
    self.chat = chat  # a labeling.chat.ChatFormat every prompt is wrapped in, or None (plain text)
    self.max_len, self.batch_size, self.length_bucket = max_len, batch_size, length_bucket
    self.mesh = mesh or partitioning.make_mesh({"data": -1})
    self.rules = rules
    partitioning.check_batch_fits(batch_size, self.mesh, "labeler batch_size")
    self.params = models.place_params(model, params, self.mesh, rules)
    self._last_logits = jax.jit(self._last_logits_fn)
    self._prefix_cache = jax.jit(self._prefix_cache_fn)
    self._suffix_logits = jax.jit(self._suffix_logits_fn)
    self._answer_logprobs = jax.jit(self._answer_logprobs_fn, static_argnames=("tail",))
    self._continues = None
    self.truncated = 0  # prompts whose context was cut to fit max_len, over this labeler's life

  @classmethod
  def from_source(cls, source: models.ModelSource, mesh, **kwargs) -> Labeler:
    """A labeler (or judge) whose model, weights and vocabulary come from source, its prompts in
    source.chat_format; kwargs as for the constructor (name, max_len, batch_size, rules)."""
    loaded = source.load(mesh, kwargs.get("rules", partitioning.DEFAULT_RULES))
    kwargs.setdefault("chat", getattr(loaded.vocab, "chat", None))  # a data.ChatVocabulary's format
    return cls(loaded.model, loaded.params, loaded.vocab, mesh=mesh, **kwargs)

  # ---- compiled pieces ------------------------------------------------------------------
  def _last_logits_fn(self, params, toks, mask, answer_ids):
    """Logits of the answer tokens at the last position: [B, L] left-padded -> [B, C]."""
    hidden, _ = self.model.apply({"params": params}, toks, mask, method=models.Transformer.hidden_states)
    return self.model.apply({"params": params}, hidden[:, -1], answer_ids, method=models.Transformer.token_logits)

  def _prefix_cache_fn(self, params, prefix):
    """The KV cache of the shared prefix [B, P] (the same tokens in every row)."""
    rows, length = prefix.shape
    cache = models.init_cache(self.model.config, rows, length)
    positions = jnp.broadcast_to(jnp.arange(length), prefix.shape)
    _, cache = self.model.apply(
      {"params": params}, prefix, None, positions, cache, method=models.Transformer.hidden_states
    )
    return cache

  def _suffix_logits_fn(self, params, prefix_cache, toks, mask, last, answer_ids):
    """Logits of the answer tokens after each row's last real token: [B, S] right-padded rows that
    continue the prefix in prefix_cache; last [B] is each row's last real index. -> [B, C]."""
    rows, length = toks.shape
    cache = models.extend_cache(self.model.config, prefix_cache, length)
    positions = prefix_cache["index"] + jnp.broadcast_to(jnp.arange(length), toks.shape)
    hidden, _ = self.model.apply(
      {"params": params}, toks, mask, positions, cache, method=models.Transformer.hidden_states
    )
    at_last = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return self.model.apply({"params": params}, at_last, answer_ids, method=models.Transformer.token_logits)

  def _answer_logprobs_fn(self, params, toks, mask, answer_mask, end_at=None, continues=None, *, tail: int):
    """Sum of log-probs over answer_mask positions of [B, L] whose answers fill the last `tail`
    positions (answers right after prompts). Only the last tail + 1 positions get logits: a
    [B, L, V] array over Gemma's 262k vocabulary would take gigabytes.

    With end_at [B] (each answer's length, which is its last token's index in the window) and
    continues [V] (tokens that would extend the answer), adds log P(the next token does not
    continue it) = logsumexp of the next-token log-probs outside `continues`."""
    hidden, _ = self.model.apply({"params": params}, toks, mask, method=models.Transformer.hidden_states)
    window = hidden[:, -(tail + 1) :]  # predicts the answer tokens and what follows the last one
    logits = self.model.apply({"params": params}, window, method=models.Transformer.logits)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp[:, :-1], toks[:, -tail:, None], axis=-1)[..., 0]
    total = jnp.sum(picked * answer_mask[:, -tail:], axis=-1)
    if continues is None:
      return total
    after = jnp.take_along_axis(logp, end_at[:, None, None], axis=1)[:, 0]  # [B, V]
    return total + jax.nn.logsumexp(jnp.where(continues, -jnp.inf, after), axis=-1)

  # ---- a prefix shared by every prompt ----------------------------------------------------
  def _shared_prefix(self, prompt_ids) -> int:
    """Length of the tokens every prompt starts with (each keeps at least one of its own), or 0
    when shorter than share_prefix or when the prompts fill fewer than SHARE_MIN_BATCHES batches
    (the prefix computed fewer times than that does not pay for compiling two more programs)."""
    if not self.share_prefix or len(prompt_ids) < self.SHARE_MIN_BATCHES * self.batch_size:
      return 0
    first, shortest = prompt_ids[0], min(len(p) for p in prompt_ids)
    length = shortest - 1
    for p in prompt_ids:
      length = next((i for i in range(length) if p[i] != first[i]), length)
    return length if length >= self.share_prefix else 0

  def _scores_after_prefix(self, prompt_ids, length: int, answer_ids) -> np.ndarray:
    """Answer logits [N, C]: the shared prefix computed once, each batch of the prompts' own
    tokens (right-padded to a bucket) read it from the cache."""
    with partitioning.axis_rules(self.mesh, self.rules):
      prefix = np.tile(np.asarray(prompt_ids[0][:length], np.int32), (self.batch_size, 1))
      cache = self._prefix_cache(self.params, partitioning.put_batch({"p": prefix}, self.mesh, self.rules)["p"])

    def batches():
      for start in range(0, len(prompt_ids), self.batch_size):
        chunk = [list(r[length:]) for r in prompt_ids[start : start + self.batch_size]]
        width = self._bucket(max(len(r) for r in chunk))
        toks, mask = np.zeros((self.batch_size, width), np.int32), np.zeros((self.batch_size, width), bool)
        for i, row in enumerate(chunk):
          toks[i, : len(row)], mask[i, : len(row)] = row, True
        yield len(chunk), (toks, mask, np.maximum(mask.sum(1) - 1, 0).astype(np.int32))

    fn = functools.partial(self._suffix_logits, self.params, cache, answer_ids=answer_ids)
    return batched.run_batches(fn, batches(), self.mesh, self.rules).astype(np.float32)

  # ---- batching -------------------------------------------------------------------------
  def _bucket(self, length: int) -> int:
    return min(self.max_len, self.length_bucket * math.ceil(max(length, 1) / self.length_bucket))

  def _batches(self, rows: Sequence[Sequence[int]], extra: int = 0):
    """(real rows, (tokens, mask)) chunks of batch_size left-padded rows, padded with empty
    rows; each chunk's length is its longest row (+ extra) rounded up to a bucket."""
    for start in range(0, len(rows), self.batch_size):
      chunk = [list(r) for r in rows[start : start + self.batch_size]]
      n = len(chunk)
      chunk += [[0]] * (self.batch_size - n)
      yield n, sampling.left_pad(chunk, 0, self._bucket(max(len(r) for r in chunk) + extra) - extra)

  def wrapped(self, parts: P.PromptParts) -> P.PromptParts:
    """The prompt as the model is shown it: in its chat format, if it has one."""
    return parts if self.chat is None else self.chat.wrap(parts)

  def encode(self, parts: P.PromptParts, reserve: int = 0, cuts: list | None = None) -> list[int]:
    """Prompt ids (in the chat format, if any) cut to fit max_len - reserve (room for answers or a
    rationale); whether the context was cut is appended to cuts, when given."""
    ids, cut = P.encode_parts(self.vocab, self.wrapped(parts), self.max_len - reserve)
    self.truncated += cut
    if cuts is not None:
      cuts.append(bool(cut))
    return ids

  # ---- scoring --------------------------------------------------------------------------
  def answer_scores(
    self, prompt_ids: Sequence[Sequence[int]], answers: tokens.Answers, complete: bool = False
  ) -> np.ndarray:
    """[N, C]: answer logits (single-token answers) or full answer log-probabilities.

    complete: multi-token answers are scored as complete answers, log P(answer tokens) + log P(the
    next token does not continue a number): with "10" spelled "1" "0", "1" alone is then the
    event "the answer is 1 and ends", disjoint from "10" (docs/METHOD.md, direct RLAIF score).
    Single-token answers are disjoint already (their first tokens differ)."""
    if not prompt_ids:
      return np.zeros((0, len(answers.ids)), np.float32)
    # Prompts of like length share batches (each padded to its longest, rounded to a bucket), so
    # little of a batch is padding; the scores come back in the callers' order.
    order = np.argsort([len(p) for p in prompt_ids], kind="stable")
    scores = self._answer_scores([prompt_ids[i] for i in order], answers, complete)
    out = np.empty_like(scores)
    out[order] = scores
    return out

  def _answer_scores(self, prompt_ids, answers: tokens.Answers, complete: bool) -> np.ndarray:
    if answers.single_token:
      ids = jnp.asarray([a[0] for a in answers.ids], jnp.int32)
      shared = self._shared_prefix(prompt_ids)
      if shared:
        return self._scores_after_prefix(prompt_ids, shared, ids)
      fn = functools.partial(self._last_logits, self.params, answer_ids=ids)
      return batched.run_batches(fn, self._batches(prompt_ids), self.mesh, self.rules).astype(np.float32)
    longest = max(len(a) for a in answers.ids)
    continues = jnp.asarray(self.continuation_mask()) if complete else None
    columns = []
    for answer in answers.ids:
      pad = longest - len(answer)
      tail = np.asarray(list(answer) + [0] * pad, np.int32)
      tail_mask = np.asarray([True] * len(answer) + [False] * pad)

      def with_answer(batches, tail=tail, tail_mask=tail_mask, size=len(answer)):  # prompts + answer: [B, L + longest]
        for n, (toks, mask) in batches:
          rows = len(toks)
          full = np.concatenate([toks, np.tile(tail, (rows, 1))], 1)
          full_mask = np.concatenate([mask, np.tile(tail_mask, (rows, 1))], 1)
          answer_mask = np.concatenate([np.zeros_like(mask), np.tile(tail_mask, (rows, 1))], 1)
          arrays = (full, full_mask, answer_mask.astype(np.float32))
          yield n, arrays + ((np.full((rows,), size, np.int32),) if complete else ())

      fn = functools.partial(self._answer_logprobs, self.params, continues=continues, tail=longest)
      columns.append(
        batched.run_batches(fn, with_answer(self._batches(prompt_ids, extra=longest)), self.mesh, self.rules)
      )
    return np.stack(columns, axis=1).astype(np.float32)

  def fit_text(self, text: str, max_tokens: int) -> str:
    """text cut (from the right) until it encodes to at most max_tokens tokens. A decoded
    sample can encode longer than it was generated (bytes that were not valid UTF-8 come back
    as U+FFFD, three bytes each), so a rationale is fitted before it goes into a prompt."""
    keep = len(text)
    while keep and (over := len(self.vocab.encode(text[:keep])) - max_tokens) > 0:
      keep -= max(1, over // 4)
    return text[:keep]

  def _rationale_overhead(self, config: P.PromptConfig) -> int:
    """Tokens with_rationale adds besides the rationale itself (a space, a newline, the ending),
    with slack for merges at the seams."""
    return len(self.vocab.encode(" \n" + P.ending(config.task))) + 4

  def continuation_mask(self) -> np.ndarray:
    """[V] bool: tokens that extend a number (tokens.continuation_mask), computed once."""
    if self._continues is None:
      self._continues = tokens.continuation_mask(self.vocab, self.model.config.vocab_size)
    return self._continues

  def generate(self, prompt_ids: Sequence[Sequence[int]], temperature: float, max_new: int, seed: int) -> list[str]:
    """Continuations (e.g. rationales), decoded and cut at EOS or the first blank line."""
    cfg = sampling.SamplingConfig(max_new, temperature)
    stop = generation.StopRule(text_stop="\n\n")
    gen = generation.Generator(
      self.model, self.vocab, cfg, batch_size=self.batch_size, stop=stop, mesh=self.mesh, rules=self.rules
    )
    texts = []
    for b, (n, (toks, mask)) in enumerate(self._batches(prompt_ids)):
      key = jax.random.fold_in(jax.random.PRNGKey(seed), b * self.batch_size)
      texts += gen.sample_arrays(self.params, toks, mask, key).texts[:n]
    return texts

  # ---- the two uses -----------------------------------------------------------------------
  def label_pairs(
    self,
    pairs: Sequence[dict],
    config: P.PromptConfig,
    exemplars: Sequence[P.Exemplar] = (),
    seed: int = 0,
    return_prompts: bool = False,
  ) -> list[dict]:
    """Soft preferences for pairs {id, inputs, response_a, response_b[, human_choice]}.

    Returns per pair: id, p_a, p1_ab, p1_ba (None with one order), rationales per order,
    prompt_variant, labeler and human_choice (when given); with return_prompts, the final
    prompts per order as text.
    """
    answers = tokens.resolve_answers(
      self.vocab, tokens.PAIR_ANSWERS, P.ending(config.task), self.model.config.vocab_size
    )
    reserve = max(len(a) for a in answers.ids)
    # chain of thought: the rationale (cut to max_rationale_tokens) and the ending follow the request
    extra = config.max_rationale_tokens + self._rationale_overhead(config) if config.chain_of_thought else 0
    too_long = {}
    for p in pairs:  # responses never get cut: a pair whose responses cannot fit is not labeled
      try:
        probe = P.pair_prompt(config, "", p["response_a"], p["response_b"], exemplars, config.chain_of_thought)
        P.encode_parts(self.vocab, probe, self.max_len - reserve - extra)
      except ValueError as e:
        too_long[p["id"]] = str(e)
    if too_long:
      fitting = [p for p in pairs if p["id"] not in too_long]
      done = {
        r["id"]: r for r in (self.label_pairs(fitting, config, exemplars, seed, return_prompts) if fitting else [])
      }
      skipped = {"prompt_variant": config.name, "labeler": self.name, "p_a": None}
      return [
        done.get(p["id"])
        or {"id": p["id"], **skipped, "human_choice": p.get("human_choice", -1), "error": too_long[p["id"]]}
        for p in pairs
      ]
    orders = ORDERS if config.both_orders else ORDERS[:1]
    p1, rationales, shown, cut = {}, {}, {}, np.zeros(len(pairs), bool)
    for order in orders:
      parts = [
        P.pair_prompt(
          config,
          p["inputs"],
          *((p["response_a"], p["response_b"]) if order == "ab" else (p["response_b"], p["response_a"])),
          exemplars,
          config.chain_of_thought,
        )
        for p in pairs
      ]
      if not config.chain_of_thought:
        finals = [[x] for x in parts]
        rationales[order] = [[] for _ in pairs]
      else:
        cuts = []
        cot_ids = [self.encode(x, reserve + extra, cuts) for x in parts]
        cut |= np.asarray(cuts)
        samples = [
          [
            self.fit_text(r, config.max_rationale_tokens)
            for r in self.generate(cot_ids, config.cot_temperature, config.max_rationale_tokens, seed + 7919 * s)
          ]
          for s in range(config.self_consistency)
        ]
        rationales[order] = [[s[i] for s in samples] for i in range(len(pairs))]
        finals = [[P.with_rationale(x, r, config.task) for r in rationales[order][i]] for i, x in enumerate(parts)]
      flat = [f for group in finals for f in group]
      cuts = []
      scores = self.answer_scores([self.encode(f, reserve, cuts) for f in flat], answers)
      probs = np.asarray(scoring.preference_from_logits(scores[:, 0], scores[:, 1]))
      n = len(finals[0])  # samples per pair; self-consistency averages their distributions
      cut |= np.asarray(cuts).reshape(len(pairs), n).any(axis=1)
      p1[order] = probs.reshape(len(pairs), n).mean(axis=1)
      shown[order] = [self.wrapped(finals[i][-1]).text for i in range(len(pairs))]
    p_a = np.asarray(scoring.debias_preference(p1["ab"], p1["ba"])) if config.both_orders else p1["ab"]
    records = []
    for i, pair in enumerate(pairs):
      rec = {
        "id": pair["id"],
        "p_a": float(p_a[i]),
        "p1_ab": float(p1["ab"][i]),
        "p1_ba": float(p1["ba"][i]) if config.both_orders else None,
        "rationales": {o: rationales[o][i] for o in orders},
        "prompt_variant": config.name,
        "labeler": self.name,
        "context_cut": bool(cut[i]),  # a prompt's context was cut to fit max_len: another max_len labels it anew
      }
      if pair.get("human_choice", -1) in (0, 1):
        rec["human_choice"] = int(pair["human_choice"])
      if return_prompts:
        rec["prompts"] = {o: shown[o][i] for o in orders}
      records.append(rec)
    return records

  def direct_scores(self, task: str, contexts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """Direct RLAIF: each response's 1-10 rating mapped to [-1, 1]. [N].

    P(i) is the probability of the complete answer i (docs/METHOD.md): on tokenizers that spell "10"
    as "1" then "0" (Gemma's, bytes), the score i's tokens followed by a token that does not
    continue the number, so P("1") = P("1") x (1 - P(digit | "1")) and the ten are disjoint
    events; then s = sum_i i P(i) / sum_i P(i) and r = (s - 5.5) / 4.5."""
    answers = tokens.resolve_answers(self.vocab, tokens.SCORE_ANSWERS, "Score (1-10)=", self.model.config.vocab_size)
    reserve = max(len(a) for a in answers.ids)
    ids = [self.encode(P.direct_prompt(task, c, r), reserve) for c, r in zip(contexts, responses)]
    return np.asarray(scoring.direct_score(self.answer_scores(ids, answers, complete=True)))

  def harmless_probs(self, contexts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """P(harmless) of each response judged on its own: softmax over the answers "1" (harmless)
    and "2" (harmful) after the harmlessness prompt. [N]."""
    answers = tokens.resolve_answers(self.vocab, tokens.PAIR_ANSWERS, P.HARMLESS_ENDING, self.model.config.vocab_size)
    reserve = max(len(a) for a in answers.ids)
    ids = [self.encode(P.harmless_prompt(c, r), reserve) for c, r in zip(contexts, responses)]
    scores = self.answer_scores(ids, answers)
    return np.asarray(scoring.preference_from_logits(scores[:, 0], scores[:, 1]))
