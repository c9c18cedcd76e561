"""Whole-path parity on real weights (issue 35), shared by the Gemma 3 and SmolLM2 tests: the SFT
objective's NLL of held-out hh-rlhf replies and greedy replies through the evaluation's
generation path, each against transformers reading the same GGUF."""

import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
from conftest import REAL_HH

from rlaif_jax import data, generation, models, partitioning, sampling
from rlaif_jax.sft import SFTObjective

MAX_LEN = 256


def logits_against_transformers(hf, config, params, ids, chunk: int = 128) -> tuple[float, float, float]:
  """Our logits of ids ([1, T] torch) against transformers', compared chunk by chunk of positions so
  that neither side holds [T, V] float32 logits whole (Gemma's 262k vocabulary makes them about 1 GB
  at 900 tokens, and a comparison's temporaries several times that): -> (largest absolute
  difference, largest |logit| of transformers', fraction of positions whose argmax agrees)."""
  import torch

  model = models.Transformer(config)
  tokens = jnp.asarray(ids.numpy())
  hidden = jax.jit(lambda p, t: model.apply({"params": p}, t, method=models.Transformer.hidden_states)[0])(
    params, tokens
  )
  logits = jax.jit(lambda p, h: model.apply({"params": p}, h, method=models.Transformer.logits))
  with torch.no_grad():
    theirs = hf.model(ids).last_hidden_state
    cap = getattr(hf.config, "final_logit_softcapping", None)
    worst, scale, agree = 0.0, 0.0, 0
    for start in range(0, ids.shape[1], chunk):
      want = hf.lm_head(theirs[:, start : start + chunk])
      want = (torch.tanh(want / cap) * cap if cap else want)[0].numpy()
      got = np.asarray(logits(params, hidden[:, start : start + chunk]))[0]
      worst, scale = max(worst, float(np.abs(got - want).max())), max(scale, float(np.abs(want).max()))
      agree += int((got.argmax(-1) == want.argmax(-1)).sum())
  return worst, scale, agree / ids.shape[1]


def held_out(n: int = 8, limit: int = 200) -> list[tuple[str, str]]:
  """(dialogue, chosen reply) of the last hh-rlhf pairs of the bundled sample (held out: nothing
  here trains on them), those under 4 * limit characters, so a row fits MAX_LEN tokens."""
  with gzip.open(REAL_HH, "rt", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  pairs = []
  for row in reversed(rows):
    try:
      pairs.append(data.split_dialogue(row["chosen"], row["rejected"])[:2])
    except data.FieldError:  # a few lines of hh-rlhf have an empty reply
      continue
  return [(c, r) for c, r in pairs if len(c) + len(r) < 4 * limit][:n]


def messages(dialogue: str, reply: str | None = None) -> list[dict]:
  """An hh-rlhf dialogue as chat messages (as a user of transformers writes them)."""
  import re

  pieces = re.split(r"\n\n(Human|Assistant):", dialogue)
  roles, texts = pieces[1:-2:2], pieces[2:-2:2]
  out = [{"role": "user" if r == "Human" else "assistant", "content": t.strip()} for r, t in zip(roles, texts)]
  return out + ([{"role": "assistant", "content": reply.strip()}] if reply is not None else [])


def sft_nll(loaded: models.LoadedModel, pairs) -> np.ndarray:
  """Each reply's mean NLL per target token through the SFT stage's path: the encoder's SFT
  examples, sft_features' rows and SFTObjective's loss, one row at a time."""
  examples = [{"inputs_pretokenized": c.encode(), "targets_pretokenized": r.encode()} for c, r in pairs]
  arrays, stats = data.sft_features(data.encoder.sft_examples(examples, loaded.vocab), MAX_LEN, loaded.vocab.pad_id)
  assert stats["truncated_inputs"] == stats["truncated_targets"] == 0
  loss = jax.jit(lambda params, batch: SFTObjective(loaded.model).loss_fn(params, batch, None)[0])
  rows = [{k: jnp.asarray(v[i : i + 1]) for k, v in arrays.items()} for i in range(len(pairs))]
  return np.asarray([float(loss(loaded.params, row)) for row in rows])


def hf_nll(hf, ids: list[int], context_len: int) -> float:
  """transformers' mean NLL of ids[context_len:] given what comes before."""
  import torch

  with torch.no_grad():  # the reply's positions only: a whole row of Gemma's logits in float64 is 1 GB
    logits = hf(torch.tensor([ids])).logits[0, context_len - 1 : len(ids) - 1]
  logp = torch.log_softmax(logits.double(), -1).numpy()
  return float(-logp[np.arange(len(ids) - context_len), np.asarray(ids[context_len:])].mean())


def greedy_tokens(loaded: models.LoadedModel, dialogues, max_new: int) -> list[list[int]]:
  """Greedy replies' tokens (the stop token kept) through generation.Generator, the path
  evaluation samples by: the encoder's prompts, pad_prompts, sample_arrays."""
  mesh = partitioning.make_mesh({"data": 1}, jax.devices()[:1])
  gen = generation.Generator(
    loaded.model, loaded.vocab, sampling.SamplingConfig(max_new, 0.0), batch_size=len(dialogues),
    max_prompt_len=MAX_LEN, mesh=mesh,
  )  # fmt: skip
  tokens, mask = gen.pad_prompts([data.encoder.context(loaded.vocab, d) for d in dialogues])
  out = gen.sample_arrays(loaded.params, tokens, mask, jax.random.PRNGKey(0))
  return [row[keep].tolist() for row, keep in zip(np.asarray(out.tokens), np.asarray(out.mask, bool))]


def hf_greedy(hf, ids: list[int], max_new: int, eos_id: int) -> list[int]:
  """transformers' greedy reply to ids, up to and including its EOS."""
  import torch

  with torch.no_grad():
    out = hf.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False, eos_token_id=eos_id,
                      pad_token_id=eos_id)[0, len(ids) :].tolist()  # fmt: skip
  return out[: out.index(eos_id) + 1] if eos_id in out else out
