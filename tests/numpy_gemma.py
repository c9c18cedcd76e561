"""An independent numpy forward pass of a Gemma-3-style decoder, written from the equations.

Used as the reference for rlaif_jax.models; shares no code with it. Float64 throughout.
"""

import numpy as np


def rms_norm(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (1.0 + scale)


def rope(x, pos, base, scale=1.0):
  """x: [T, N, H], pos: [T]. Pairs (i, i + H/2) rotate as complex numbers by pos * base^(-2i/H)."""
  h = x.shape[-1] // 2
  theta = (pos[:, None] / scale) * base ** (-2.0 * np.arange(h) / (2 * h))  # [T, H/2]
  z = (x[..., :h] + 1j * x[..., h:]) * np.exp(1j * theta)[:, None, :]
  return np.concatenate([z.real, z.imag], axis=-1)


def gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def forward(params, cfg, tokens, valid=None):
  """Logits [T, V] for one sequence tokens [T]; valid marks real tokens (left padding allowed)."""
  p = {k: np.asarray(v, np.float64) for k, v in _flatten(params).items()}
  t = len(tokens)
  valid = np.ones(t, bool) if valid is None else np.asarray(valid)
  pos = np.maximum(np.cumsum(valid) - 1, 0)
  emb = p["embedder/embedding"]
  x = emb[tokens] * np.sqrt(cfg.embed_dim)
  n, k, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  for i, kind in enumerate(cfg.attention_types):
    pre = f"blocks_{i}/"
    h = rms_norm(x, p[pre + "pre_attn_norm/scale"], cfg.norm_eps)
    q = np.einsum("td,dnh->tnh", h, p[pre + "attn/q"])
    kk = np.einsum("td,dkh->tkh", h, p[pre + "attn/k"])
    v = np.einsum("td,dkh->tkh", h, p[pre + "attn/v"])
    q = rms_norm(q, p[pre + "attn/query_norm/scale"], cfg.norm_eps)
    kk = rms_norm(kk, p[pre + "attn/key_norm/scale"], cfg.norm_eps)
    local = kind.value == "local"
    base = cfg.rope_base_local if local else cfg.rope_base_global
    sc = 1.0 if local else cfg.rope_scale_global
    q = rope(q, pos, base, sc) * cfg.query_scale
    kk = rope(kk, pos, base, sc)
    out = np.zeros((t, n, hd))
    for head in range(n):
      kv = head // (n // k)
      logits = q[:, head] @ kk[:, kv].T  # [T, S]
      if cfg.attn_logits_soft_cap:
        logits = np.tanh(logits / cfg.attn_logits_soft_cap) * cfg.attn_logits_soft_cap
      for a in range(t):
        for b in range(t):
          ok = b <= a and valid[b] and (not local or a - b < cfg.sliding_window)
          if not ok:
            logits[a, b] = -np.inf
      logits -= np.max(np.where(np.isfinite(logits), logits, -1e300), axis=-1, keepdims=True)
      w = np.exp(logits)
      w /= np.maximum(w.sum(-1, keepdims=True), 1e-300)
      out[:, head] = w @ v[:, kv]
    a = np.einsum("tnh,nhd->td", out, p[pre + "attn/o"])
    x = x + rms_norm(a, p[pre + "post_attn_norm/scale"], cfg.norm_eps)
    h = rms_norm(x, p[pre + "pre_ffw_norm/scale"], cfg.norm_eps)
    m = gelu_tanh(h @ p[pre + "mlp/gate"]) * (h @ p[pre + "mlp/up"])
    x = x + rms_norm(m @ p[pre + "mlp/down"], p[pre + "post_ffw_norm/scale"], cfg.norm_eps)
  x = rms_norm(x, p["final_norm/scale"], cfg.norm_eps)
  logits = x @ emb.T
  if cfg.final_logit_soft_cap:
    logits = np.tanh(logits / cfg.final_logit_soft_cap) * cfg.final_logit_soft_cap
  return logits, x


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, prefix + key + "/"))
    else:
      out[prefix + key] = value
  return out
