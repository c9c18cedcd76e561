"""Loss functions on arrays. Log-softmax is always taken in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def token_log_probs(logits: Array, targets: Array) -> Array:
  """log softmax(logits)[target]: logits [B, T, V], targets [B, T] -> [B, T] float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def masked_token_cross_entropy(logits: Array, targets: Array, mask: Array) -> tuple[Array, Array]:
  """Mean cross-entropy over masked tokens, and the number of those tokens.

  logits: [B, T, V]; targets, mask: [B, T]. Returns (loss, count), loss 0 when count is 0.
  """
  mask = mask.astype(jnp.float32)
  nll = -token_log_probs(logits, targets) * mask
  count = jnp.sum(mask)
  return jnp.sum(nll) / jnp.maximum(count, 1.0), count


def next_token_inputs(tokens: Array, loss_mask: Array) -> tuple[Array, Array, Array]:
  """Shifts a sequence for next-token prediction: (inputs, targets, target_mask).

  Position t predicts token t + 1; a target counts where loss_mask marks token t + 1.
  """
  return tokens[:, :-1], tokens[:, 1:], loss_mask[:, 1:]


def soft_label_rm_loss(r_a: Array, r_b: Array, p_a: Array) -> Array:
  """Soft-label reward-model loss, mean over B of
  -[p_a log sigmoid(r_a - r_b) + (1 - p_a) log sigmoid(r_b - r_a)].

  r_a, r_b: [B] rewards of the two responses; p_a: [B] probability that A is preferred
  (hard human labels are p_a in {0, 1}). Uses log_sigmoid, so large margins neither
  overflow nor give NaN.
  """
  margin = jnp.asarray(r_a, jnp.float32) - jnp.asarray(r_b, jnp.float32)
  p_a = jnp.asarray(p_a, jnp.float32)
  return -jnp.mean(p_a * jax.nn.log_sigmoid(margin) + (1.0 - p_a) * jax.nn.log_sigmoid(-margin))


def sequence_logprob(token_logp: Array, mask: Array) -> Array:
  """Length-normalized log-probability p = (1/|y|) sum_t log pi(y_t | x, y_<t). [..., T] -> [...]."""
  mask = mask.astype(jnp.float32)
  return jnp.sum(token_logp.astype(jnp.float32) * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


def rrhf_rank_loss(seq_logprob: Array, scores: Array, valid: Array | None = None) -> Array:
  """RRHF ranking loss: per input, sum over valid pairs (i, j) with scores_i < scores_j of
  max(0, seq_logprob_i - seq_logprob_j); mean over B.

  seq_logprob, scores: [B, K]; valid: optional [B, K] bool mask of real responses. Ties
  contribute nothing.
  """
  seq_logprob = jnp.asarray(seq_logprob, jnp.float32)
  scores = jnp.asarray(scores, jnp.float32)
  valid = jnp.ones(scores.shape, jnp.bool_) if valid is None else jnp.asarray(valid, jnp.bool_)
  worse = scores[:, :, None] < scores[:, None, :]  # [B, i, j]: response i scored below j
  pairs = worse & valid[:, :, None] & valid[:, None, :]
  hinge = jnp.maximum(0.0, seq_logprob[:, :, None] - seq_logprob[:, None, :])
  return jnp.mean(jnp.sum(jnp.where(pairs, hinge, 0.0), axis=(1, 2)))


def rrhf_sft_loss(token_logp: Array, mask: Array, scores: Array, valid: Array | None = None) -> Array:
  """RRHF's fine-tuning term: -sum_t log pi(y_i*,t | x, y_i*,<t) for i* = the best-scored valid
  response; mean over B. token_logp, mask: [B, K, T]; scores: [B, K]."""
  scores = jnp.asarray(scores, jnp.float32)
  if valid is not None:
    scores = jnp.where(jnp.asarray(valid, jnp.bool_), scores, -jnp.inf)
  best = jnp.argmax(scores, axis=-1)  # [B]
  picked = jnp.take_along_axis(token_logp.astype(jnp.float32) * mask.astype(jnp.float32), best[:, None, None], 1)
  return -jnp.mean(jnp.sum(picked[:, 0], axis=-1))


def _dpo_log_ratio_margin(logp_a, logp_b, ref_logp_a, ref_logp_b) -> Array:
  """h = (logp_a - ref_logp_a) - (logp_b - ref_logp_b) in float32, all [B]."""
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return (f32(logp_a) - f32(ref_logp_a)) - (f32(logp_b) - f32(ref_logp_b))


def soft_dpo_loss(logp_a: Array, logp_b: Array, ref_logp_a: Array, ref_logp_b: Array, p_a: Array, beta) -> Array:
  """Soft-label DPO loss -> scalar float32.

  logp_a, logp_b: [B] sequence log-probabilities of responses A and B under the policy;
  ref_logp_a, ref_logp_b: [B] the same under the frozen reference; p_a: [B] soft preference
  for A; beta: the KL strength. With d = beta ((logp_a - ref_logp_a) - (logp_b - ref_logp_b)),
  the mean over B of -[p_a log sigmoid(d) + (1 - p_a) log sigmoid(-d)]. p_a in {0, 1} is DPO,
  p_a = 1 - eps conservative DPO; AI soft labels are used as they are. Uses log_sigmoid, so
  large margins neither overflow nor give NaN.
  """
  d = jnp.asarray(beta, jnp.float32) * _dpo_log_ratio_margin(logp_a, logp_b, ref_logp_a, ref_logp_b)
  p_a = jnp.asarray(p_a, jnp.float32)
  return -jnp.mean(p_a * jax.nn.log_sigmoid(d) + (1.0 - p_a) * jax.nn.log_sigmoid(-d))


def soft_ipo_loss(logp_a: Array, logp_b: Array, ref_logp_a: Array, ref_logp_b: Array, p_a: Array, beta) -> Array:
  """Soft-label IPO loss (Azar et al. 2023) -> scalar float32.

  Same [B] inputs as soft_dpo_loss. With h = (logp_a - ref_logp_a) - (logp_b - ref_logp_b),
  the mean over B of (h - (2 p_a - 1) / (2 beta))^2; p_a = 1 gives (h - 1 / (2 beta))^2.
  """
  h = _dpo_log_ratio_margin(logp_a, logp_b, ref_logp_a, ref_logp_b)
  target = (2.0 * jnp.asarray(p_a, jnp.float32) - 1.0) / (2.0 * jnp.asarray(beta, jnp.float32))
  return jnp.mean(jnp.square(h - target))


def streamed_token_stats(
  hidden: Array, table: Array, targets: Array, slices: int, soft_cap: float | None = None
) -> tuple[Array, Array, Array]:
  """(log p(target), argmax, entropy) per position of the logits hidden @ table.T, without the
  [B, T, V] logits: the vocabulary is read in `slices` interleaved slices (row v in slice
  v % slices, so a vocabulary split over devices is split alike in every slice); each slice's
  logits are made, folded into a running log-sum-exp, the target's logit, the argmax and the
  entropy's sum, and dropped, and the backward pass makes them again (jax.checkpoint). At
  Gemma's 262k vocabulary the logits are the largest tensor of a step.

  hidden [B, T, D] (the compute dtype), table [V, D] (the tied embedding), targets [B, T] int;
  soft_cap as the model's final logit soft cap. Returns float32, int32, float32 arrays [B, T]."""
  v, d = table.shape
  pad = (-v) % slices
  rows = (v + pad) // slices
  # [V + pad, D] -> [rows, slices, D], a reshape (no copy): slice j is [:, j], rows i * slices + j.
  # Each step reads its slice alone; moving the slices first ([slices, rows, D]) copied the whole
  # table, and its gradient back, once per step of training (0.67 GB each at Gemma's vocabulary).
  grouped = jnp.pad(table, ((0, pad), (0, 0))).reshape(rows, slices, d)
  f32 = jnp.float32

  @jax.checkpoint
  def fold(carry, j):
    m, s, e, target, best, best_at = carry
    weights = jax.lax.dynamic_index_in_dim(grouped, j, axis=1, keepdims=False)  # [rows, D]
    logits = jnp.einsum("BTD,ND->BTN", hidden, weights.astype(hidden.dtype), preferred_element_type=f32)
    if soft_cap is not None:
      logits = jnp.tanh(logits / soft_cap) * soft_cap
    ids = jnp.arange(rows) * slices + j
    logits = jnp.where(ids < v, logits, -jnp.inf)
    top = jnp.max(logits, axis=-1)
    m_new = jax.lax.stop_gradient(jnp.maximum(m, top))  # exact: the shift cancels in the gradient
    scale = jnp.exp(m - m_new)
    p = jnp.exp(logits - m_new[..., None])
    s = s * scale + jnp.sum(p, axis=-1)
    e = e * scale + jnp.sum(p * jnp.where(ids < v, logits, 0.0), axis=-1)
    here = jnp.take_along_axis(logits, (targets // slices)[..., None], axis=-1)[..., 0]
    target = jnp.where(targets % slices == j, here, target)
    better = top > best
    best_at = jnp.where(better, jnp.argmax(logits, axis=-1).astype(jnp.int32) * slices + j, best_at)
    return (m_new, s, e, target, jnp.maximum(best, top), best_at), None

  shape = targets.shape
  start = (
    jnp.full(shape, -jnp.inf, f32),  # running max
    jnp.zeros(shape, f32),  # sum of exp(logit - max)
    jnp.zeros(shape, f32),  # sum of exp(logit - max) * logit
    jnp.zeros(shape, f32),  # the target's logit
    jnp.full(shape, -jnp.inf, f32),  # the best logit so far
    jnp.zeros(shape, jnp.int32),  # and its token
  )
  (m, s, e, target, _, best_at), _ = jax.lax.scan(fold, start, jnp.arange(slices))
  lse = m + jnp.log(s)
  return target - lse, best_at, lse - e / s


PREFERENCE_LOSSES = ("dpo", "ipo")


def preference_loss(kind: str, logp: Array, ref_logp: Array, p_a: Array, beta) -> tuple[Array, dict]:
  """soft_dpo_loss (kind "dpo") or soft_ipo_loss ("ipo") of pairs, and what DPO trainers log.

  logp, ref_logp: [B, 2] sequence log-probabilities of responses A and B under the policy and
  the frozen reference; p_a: [B] the soft preference for A; beta: the KL strength. kind is
  static. Metrics: "accuracy", the share of the pairs with a preference (p_a != 0.5) whose
  implicit preference (A when beta h > 0, h the log-ratio margin of soft_ipo_loss) is the
  label's; "margin", beta h signed toward the label's choice (A when p_a >= 0.5), its mean;
  "log_ratio", the mean over responses of log pi - log pi_ref (the implicit rewards / beta).
  """
  if kind not in PREFERENCE_LOSSES:
    raise ValueError(f"preference loss {kind!r}: one of {PREFERENCE_LOSSES}")
  fn = soft_dpo_loss if kind == "dpo" else soft_ipo_loss
  logp, ref_logp = jnp.asarray(logp, jnp.float32), jnp.asarray(ref_logp, jnp.float32)
  p_a = jnp.asarray(p_a, jnp.float32)
  loss = fn(logp[:, 0], logp[:, 1], ref_logp[:, 0], ref_logp[:, 1], p_a, beta)
  ratio = logp - ref_logp
  margin = jnp.asarray(beta, jnp.float32) * (ratio[:, 0] - ratio[:, 1])
  decided = (p_a != 0.5).astype(jnp.float32)
  correct = ((margin > 0) == (p_a > 0.5)).astype(jnp.float32) * decided
  return loss, {
    "accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(decided), 1.0),
    "margin": jnp.mean(jnp.where(p_a >= 0.5, margin, -margin)),
    "log_ratio": jnp.mean(ratio),
  }
