"""LoRA (Hu et al. 2021): low-rank adapters beside a frozen base.

A targeted projection W (attention q/k/v/o, MLP gate/up/down) computes x W + (alpha / rank) x A B,
with A [its input dims..., rank] initialized at random and B [rank, its output dims...] at zero,
so a model with fresh adapters gives the base's outputs exactly. The adapters live in the
parameter tree beside the weight they adapt (`<name>_lora_a`, `<name>_lora_b`, the names qwix
and PEFT use); `split` separates what is trained (adapters, and a reward or value model's scalar
head, trained in full) from the frozen base, which the trainer keeps out of its state: no
gradients, no optimizer moments and no checkpoint copies of the base. The reference policy is the
base itself, read by a model built without adapters: one copy of the weights serves both.

Why not qwix: its LoRA recognizes a weight by the identity of the array an einsum reads, and our
layers cast each weight to the compute dtype first (bfloat16 compute over float32 weights is a new
array); and a Transformer is applied through several methods (hidden states, streamed token
statistics, scores, cached decoding) that qwix would each have to wrap. A dozen lines in the
layers do the same, visibly.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

Array = jax.Array
TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # every projection of a block
HEAD = ("score_kernel", "score_bias")  # a reward or value model's scalar head: trained in full


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """rank, alpha (the update is scaled by alpha / rank) and which projections get adapters."""

  rank: int = 16
  alpha: float = 32.0
  targets: tuple[str, ...] = TARGETS

  def __post_init__(self):
    if not (isinstance(self.rank, int) and self.rank > 0):
      raise ValueError(f"LoraConfig.rank={self.rank!r}: a positive integer")
    if not self.alpha > 0:
      raise ValueError(f"LoraConfig.alpha={self.alpha!r}: must be > 0")
    unknown = sorted(set(self.targets) - set(TARGETS))
    if unknown or not self.targets:
      raise ValueError(f"LoraConfig.targets={tuple(self.targets)!r}: names among {TARGETS}")
    object.__setattr__(self, "targets", tuple(self.targets))

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def lora(rank: int = 0, alpha: float | None = None, targets=TARGETS) -> LoraConfig | None:
  """The experiment-wide switch (gin: LORA_RANK): None at rank 0 (full fine-tuning), else a
  LoraConfig; alpha defaults to twice the rank."""
  if not rank:
    return None
  return LoraConfig(int(rank), float(alpha if alpha is not None else 2 * rank), tuple(targets))


def adapted(module: nn.Module, name: str, lora: LoraConfig | None, x: Array, weight: Array, axes, contract: int):
  """x [..., in dims] times weight [in dims..., out dims...] (its first `contract` dims read), plus
  the LoRA update when `name` is a target: (alpha / rank) (x A) B, in x's dtype. axes: the
  weight's logical axis names, from which A and B take theirs (the rank axis unsharded)."""
  out = jnp.tensordot(x, weight.astype(x.dtype), contract)
  if lora is None or name not in lora.targets:
    return out
  shape, dtype = weight.shape, module.config.param_dtype
  a_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=tuple(range(contract)), out_axis=-1)
  a = module.param(
    f"{name}_lora_a",
    nn.with_logical_partitioning(a_init, (*axes[:contract], None)),
    (*shape[:contract], lora.rank),
    dtype,
  )
  b = module.param(
    f"{name}_lora_b", nn.with_logical_partitioning(nn.initializers.zeros, (None, *axes[contract:])),
    (lora.rank, *shape[contract:]), dtype,
  )  # fmt: skip
  low = jnp.tensordot(x, a.astype(x.dtype), contract)  # [..., rank]
  return out + jnp.tensordot(low, b.astype(x.dtype), 1) * jnp.asarray(lora.scale, x.dtype)


def _is_trained(path: tuple[str, ...]) -> bool:
  return path[-1].endswith(("_lora_a", "_lora_b")) or path[-1] in HEAD


def split(params) -> tuple[dict, dict]:
  """(trained, frozen): the adapters and scalar heads, and the base; each a nested dict of the
  same layout as params (several models' params side by side, e.g. {"policy", "value"}, alike)."""
  flat = traverse_util.flatten_dict(nn.meta.unbox(params) if _boxed(params) else params)
  trained = {k: v for k, v in flat.items() if _is_trained(k)}
  frozen = {k: v for k, v in flat.items() if not _is_trained(k)}
  return traverse_util.unflatten_dict(trained), traverse_util.unflatten_dict(frozen)


def adapters(params) -> dict:
  """The adapters of params alone (no heads, no base), leaves as they are (boxed or not)."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if k[-1].endswith(("_lora_a", "_lora_b"))})


def frozen_part(params) -> dict:
  """What a LoRA run does not train: params without adapters and scalar heads."""
  return split(params)[1]


def _boxed(params) -> bool:
  return any(isinstance(x, nn.meta.AxisMetadata) for x in jax.tree_util.tree_leaves(params, is_leaf=_is_box))


def _is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def merge(*trees) -> dict:
  """One parameter tree from disjoint parts (split's inverse)."""
  flat = {}
  for tree in trees:
    for k, v in traverse_util.flatten_dict(tree).items():
      if k in flat:
        raise ValueError(f"lora.merge: {'/'.join(k)} is in two parts")
      flat[k] = v
  return traverse_util.unflatten_dict(flat)


def base_only(params) -> dict:
  """params without adapters (heads kept): what a model built without LoRA reads."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: v for k, v in flat.items() if not k[-1].endswith(("_lora_a", "_lora_b"))})


def merged_weights(params, lora: LoraConfig) -> dict:
  """The adapters folded into their weights, W + (alpha / rank) A B (in float32, then W's dtype):
  a plain tree that a model without LoRA reads with the same outputs (for export and for loading
  an adapter checkpoint as another stage's model)."""
  flat = traverse_util.flatten_dict(params)
  out = {}
  for k, v in flat.items():
    if k[-1].endswith(("_lora_a", "_lora_b")):
      continue
    a, b = flat.get((*k[:-1], f"{k[-1]}_lora_a")), flat.get((*k[:-1], f"{k[-1]}_lora_b"))
    if a is not None and b is not None:
      delta = jnp.tensordot(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), 1) * lora.scale
      v = (jnp.asarray(v, jnp.float32) + delta).astype(v.dtype)
    out[k] = v
  return traverse_util.unflatten_dict(out)
