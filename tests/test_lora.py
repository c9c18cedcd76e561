"""LoRA (models.lora): adapters against numpy, fresh adapters giving the base's outputs exactly,
merged weights giving the adapted outputs, a trainer that updates adapters only (on one device and
on a data x fsdp x tensor mesh alike), and the dpo stage learning with adapters whose checkpoint
other stages read onto its base, and only onto that base."""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from test_preference import _pairs, _write_jsonl
from test_rl import tiny_model

from rlaif_jax import data, dpo, models, optimizers, partitioning, reward, trainer
from rlaif_jax.checkpoints import CheckpointError, abstract_like, load_params
from rlaif_jax.models import lora as lora_lib
from rlaif_jax.sft import SFTObjective
from rlaif_jax.stages.dpo import run_dpo

LORA = models.LoraConfig(rank=4, alpha=8.0)


def _noisy(tree, seed, scale=0.05):
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
    treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  )


def _adapted(config, seed=0, lora=LORA, noise=0.05):
  """(plain model, LoRA model, base params, params with random non-zero adapters)."""
  plain = models.Transformer(config)
  model = plain.clone(lora=lora)
  params = models.init_params(model, jax.random.PRNGKey(seed))
  adapters, base = lora_lib.split(params)
  return plain, model, base, lora_lib.merge(_noisy(adapters, seed + 1, noise), base)


@pytest.mark.parametrize("contract", [1, 2])
def test_an_adapted_projection_against_numpy(contract):
  """x W + (alpha / rank) (x A) B, for a weight read over one input dim (q, gate) and over two (o)."""
  rng = np.random.default_rng(contract)
  shape = (6, 4, 5) if contract == 1 else (3, 4, 6)
  x = rng.normal(size=(2, 3, *shape[:contract])).astype(np.float32)
  w = rng.normal(size=shape).astype(np.float32)
  a = rng.normal(size=(*shape[:contract], 2)).astype(np.float32)
  b = rng.normal(size=(2, *shape[contract:])).astype(np.float32)
  lora = models.LoraConfig(rank=2, alpha=3.0, targets=("o",))

  class One(nn.Module):  # the one projection
    config: models.TransformerConfig

    @nn.compact
    def __call__(self, x):
      weight = self.param("o", lambda *_: jnp.asarray(w))
      return lora_lib.adapted(self, "o", lora, x, weight, ("heads", "kv", "embed")[-len(shape) :], contract)

  config = models.tiny()
  got = One(config).apply({"params": {"o": w, "o_lora_a": a, "o_lora_b": b}}, jnp.asarray(x))
  xf, wf = x.reshape(6, -1).astype(np.float64), w.reshape(int(np.prod(shape[:contract])), -1)
  want = xf @ wf + 1.5 * (xf @ a.reshape(wf.shape[0], 2)) @ b.reshape(2, -1)
  np.testing.assert_allclose(np.asarray(got).reshape(6, -1), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("preset", ["tiny", "tiny_llama"])
def test_fresh_adapters_give_the_base_exactly_and_merged_weights_the_adapted_model(preset):
  config = models.preset(preset)
  plain, model, base, params = _adapted(config)
  tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 9), 0, config.vocab_size)
  fresh = models.init_params(model, jax.random.PRNGKey(0))
  assert np.array_equal(model.apply({"params": fresh}, tokens), plain.apply({"params": base}, tokens))
  adapted = model.apply({"params": params}, tokens)
  assert float(jnp.abs(adapted - plain.apply({"params": base}, tokens)).max()) > 1e-2  # the adapters act
  merged = plain.apply({"params": lora_lib.merged_weights(params, LORA)}, tokens)
  np.testing.assert_allclose(merged, adapted, rtol=1e-4, atol=1e-4)
  names = {k[-1] for k in traverse_util.flatten_dict(lora_lib.split(params)[0])}
  assert names == {f"{t}_lora_{ab}" for t in lora_lib.TARGETS for ab in "ab"}


def test_only_some_targets_and_bad_settings():
  config = models.tiny()
  model = models.Transformer(config, lora=models.LoraConfig(rank=2, targets=("q", "v")))
  names = {k[-1] for k in traverse_util.flatten_dict(models.init_params(model, jax.random.PRNGKey(0)))}
  assert {n for n in names if "lora" in n} == {"q_lora_a", "q_lora_b", "v_lora_a", "v_lora_b"}
  assert lora_lib.lora(0) is None and lora_lib.lora(8) == models.LoraConfig(8, 16.0)
  for bad, match in [(dict(rank=0), "rank=0"), (dict(alpha=0), "alpha=0"), (dict(targets=("qkv",)), "targets")]:
    with pytest.raises(ValueError, match=match):
      models.LoraConfig(**bad)


def _sft_batch(config, rows=8, length=12, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, config.vocab_size, (rows, length)).astype(np.int32)
  ones = np.ones((rows, length), bool)
  return {"tokens": tokens, "input_mask": ones, "loss_mask": ones}


def _lora_trainer(mesh_shape):
  config = models.tiny()
  _, model, base, _ = _adapted(config)
  mesh = partitioning.make_mesh(mesh_shape)
  base = models.place_params(models.Transformer(config), base, mesh)
  init = functools.partial(models.init_params, model, boxed=True)
  objective = SFTObjective(model)
  t = trainer.Trainer(objective.loss_fn, init, optimizers.adamw(1e-2, weight_decay=0.0), mesh, frozen=base)
  return t, model, objective, base


@pytest.mark.slow
def test_a_lora_step_trains_adapters_only_and_its_gradient_is_the_full_models():
  """The state holds adapters alone (no base, no moments of it); the first step's gradient equals
  jax.grad of the full model's loss with respect to the adapters; after three steps every base
  array is bitwise what it was and the loss has fallen."""
  t, model, objective, base = _lora_trainer({"data": 1})
  before = jax.tree_util.tree_map(np.array, base)
  state = t.init_state(jax.random.PRNGKey(0), lora_lib.merge(lora_lib.adapters(_noisy_adapters(model)), base))
  names = {k[-1] for k in traverse_util.flatten_dict(state.params)}
  assert names and all(n.endswith(("_lora_a", "_lora_b")) for n in names)
  moments = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state))
  assert moments <= 2 * models.count_params(state.params) + 10
  batch = _sft_batch(model.config)
  want = jax.grad(lambda a: objective.loss_fn(lora_lib.merge(a, base), batch, None)[0])(state.params)
  losses = []
  for _ in range(3):
    state, metrics = t.step(state, batch, jax.random.PRNGKey(1))
    losses.append(float(metrics["loss"]))
    if len(losses) == 1:
      np.testing.assert_allclose(float(metrics["grad_norm"]), float(optax.tree.norm(want)), rtol=1e-5)
  assert losses[-1] < losses[0]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), base, before)


def _noisy_adapters(model):
  return _noisy(lora_lib.adapters(models.init_params(model, jax.random.PRNGKey(0))), 5)


@pytest.mark.slow
def test_a_lora_step_on_a_data_fsdp_tensor_mesh_equals_one_device():
  batch = _sft_batch(models.tiny())
  results = []
  for shape in ({"data": 1}, {"data": 2, "fsdp": 2, "tensor": 2}):
    t, model, _, base = _lora_trainer(shape)
    state = t.init_state(jax.random.PRNGKey(0), lora_lib.merge(_noisy_adapters(model), base))
    for _ in range(2):
      state, metrics = t.step(state, batch, jax.random.PRNGKey(1))
      results.append((shape, float(metrics["loss"]), float(metrics["grad_norm"])))
  one, sharded = results[:2], results[2:]
  for (_, l1, g1), (_, l2, g2) in zip(one, sharded):
    np.testing.assert_allclose([l2, g2], [l1, g1], rtol=2e-5)


@pytest.mark.slow
def test_dpo_with_lora_learns_and_its_checkpoint_is_read_onto_its_base_only(tmp_path):
  """DPO with adapters (rank 8) on the soft labels of marker pairs: held-out accuracy above 0.85.
  The checkpoint holds the adapters alone, adapters.json names the base; read as a ModelSource it
  is the base with the adapters merged (its pair log-probs those of the trained policy), and onto
  another base it is refused."""
  pairs, labels = _pairs(160, seed=0)
  task = _write_jsonl(tmp_path / "pairs.jsonl", [{"input": p.pop("inputs"), **p} for p in pairs])
  ids = [p["id"] for p in data.load_pairs(task, "train")]
  ai = _write_jsonl(tmp_path / "labels.jsonl", [{"id": i, "p_a": p} for i, p in zip(ids, labels)])
  settings = dict(task=task, eval_split=None, eval_fraction=0.2, ai_labels=ai, beta=0.1, max_len=40, batch_size=16)
  settings |= dict(num_steps=60, optimizer=optimizers.adamw(1e-2), kl_prompts=4)
  settings |= dict(kl_max_new_tokens=8, mesh_shape={"data": 2}, lora=models.LoraConfig(8, 16.0))
  settings["fit"] = trainer.FitConfig(eval_every=60, log_every=10, tensorboard=False)
  source = models.ModelSource(config=tiny_model().config)
  summary = run_dpo(str(tmp_path / "run"), source, **settings)
  print("dpo lora", {k: v for k, v in summary.items() if k.startswith("eval_")})
  assert summary["eval_accuracy_human"] > 0.85 and summary["eval_accuracy_ai"] > 0.85
  folder = tmp_path / "run" / "checkpoints"
  record = json.loads((folder / "adapters.json").read_text())
  assert record["lora"] == {"rank": 8, "alpha": 16.0, "targets": list(lora_lib.TARGETS)}
  assert record["base_identity"] == source.identity
  saved = json.loads((folder / "60" / "default" / "_METADATA").read_text())["tree_metadata"]
  params = [k for k in saved if k.startswith("('params'")]
  assert params and all(k.endswith(("_lora_a')", "_lora_b')")) for k in params), params  # no base, no moments of it
  assert all("_lora_" in k for k in saved if "'mu'" in k or "'nu'" in k)

  mesh, rules = partitioning.make_mesh({"data": 2}), partitioning.DEFAULT_RULES
  merged = source.replace(checkpoint=str(folder)).load(mesh)
  assert merged.model.lora is None
  arrays, _ = reward.pair_arrays(data.load_pairs(task, "train")[:8], [0.5] * 8, merged.vocab, 40)
  got = dpo.PairLogprobs(merged.model, 8, mesh, rules)(merged.params, arrays)
  # the trained policy as it trained: the base read by the LoRA model beside its restored adapters
  fresh = source.load(mesh, lora=models.LoraConfig(8, 16.0))
  abstract, shardings = models.param_shardings(fresh.model, mesh)
  adapters = load_params(str(folder), abstract_like(lora_lib.split(abstract)[0], lora_lib.split(shardings)[0]))
  policy = lora_lib.merge(adapters, lora_lib.frozen_part(fresh.params))
  want = dpo.PairLogprobs(fresh.model, 8, mesh, rules)(policy, arrays)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
  base = dpo.PairLogprobs(fresh.model, 8, mesh, rules)(fresh.params, arrays)
  assert np.abs(want - base).max() > 1e-2  # the adapters trained
  other = models.ModelSource(config=models.tiny_llama())
  with pytest.raises(CheckpointError, match="adapters are only read onto the base they were trained on"):
    other.replace(checkpoint=str(folder)).load(mesh)
