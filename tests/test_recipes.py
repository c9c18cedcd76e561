"""The README's recipes for a researcher's own data, chained as a researcher runs them: label my
pairs file ({prompt, chosen, rejected}), a reward model on those labels, RL with it and direct
RLAIF on my prompts file, RRHF on them, then compare the checkpoints with a judge of my choosing.
Tiny models (the two bindings the README gives for a dry run); each recipe is one gin file."""

import gzip
import json
import logging
import os

import pytest
from conftest import REAL_HH, ROOT

pytestmark = pytest.mark.slow  # the recipes chained through the command line

TINY = ["PRETRAINED = None", "JUDGE_MODEL = None", "models.preset.name = 'tiny'"]


def _recipe(name, bindings):
  import gin

  from rlaif_jax import gin_setup, pipeline

  gin.clear_config()
  try:
    gin_setup.parse_gin(
      [f"gin/recipes/{name}.gin"], [b for b in TINY if "JUDGE" not in b or "evaluate" in name] + bindings, [ROOT]
    )
    return pipeline.run()
  finally:
    gin.clear_config()


def _my_files(folder):
  """16 pairs in the common {prompt, chosen, rejected} form and their prompts, from hh-rlhf."""
  from rlaif_jax import data

  pairs = []
  for line in list(gzip.open(REAL_HH, "rt"))[:40]:
    raw = json.loads(line)
    try:
      context, chosen, rejected = data.split_dialogue(raw["chosen"], raw["rejected"])
    except data.FieldError:
      continue
    if len(context) < 600:
      pairs.append({"prompt": context, "chosen": chosen, "rejected": rejected})
  pairs = pairs[:16]
  assert len(pairs) == 16
  (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
  (folder / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in pairs[:8]))
  return str(folder / "pairs.jsonl"), str(folder / "prompts.jsonl")


@pytest.mark.slow
def test_the_recipes_chained_on_my_own_files(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  pairs, prompts = _my_files(tmp_path)
  runs = tmp_path / "runs"
  labels = _recipe(
    "label_my_pairs",
    [f"PAIRS = '{pairs}'", f"WORKDIR = '{runs}/labels'", "run_label.max_len = 2048", "run_label.batch_size = 8"],
  )["label"]
  assert labels["newly_labeled"] == 16 and labels["not_labeled"] == 0 and os.path.exists(runs / "labels" / "report.md")
  rm = _recipe(
    "rm_my_labels",
    [
      f"PAIRS = '{pairs}'",
      f"LABELS = '{runs}/labels/labels.jsonl'",
      f"WORKDIR = '{runs}/rm'",
      "RM_STEPS = 4",
      "run_rm.batch_size = 8",
      "run_rm.max_len = 256",
      "rm.Fit.eval_every = 4",
    ],
  )["rm"]
  assert rm["eval_pairs"] == 3 and os.path.exists(runs / "rm" / "reward_stats.json")
  small_rl = [
    "RL_ITERATIONS = 2",
    "run_rl.batch_size = 8",
    "run_rl.max_prompt_len = 192",
    "rl.RolloutSampling.max_new_tokens = 8",
  ]
  rl = _recipe("rl_my_prompts", [f"PROMPTS = '{prompts}'", f"RM = '{runs}/rm'", f"WORKDIR = '{runs}/rl'", *small_rl])[
    "rl"
  ]
  direct = _recipe("rl_direct_my_prompts", [f"PROMPTS = '{prompts}'", f"WORKDIR = '{runs}/rl_direct'", *small_rl])["rl"]
  assert rl["iterations"] == direct["iterations"] == 2
  rrhf = _recipe(
    "rrhf_my_prompts",
    [
      f"PROMPTS = '{prompts}'",
      f"RM = '{runs}/rm'",
      f"WORKDIR = '{runs}/rrhf'",
      "RRHF_STEPS = 2",
      "run_rrhf.batch_size = 8",
      "run_rrhf.max_len = 192",
      "rrhf.Sources.max_new_tokens = 8",
    ],
  )["rrhf"]
  assert rrhf["steps"] == 2
  policies = {"start": None, "rl": f"{runs}/rl/checkpoints", "rrhf": f"{runs}/rrhf/checkpoints"}
  ev = _recipe(
    "evaluate_checkpoints",
    [
      f"PROMPTS = '{prompts}'",
      f"POLICIES = {policies!r}",
      f"WORKDIR = '{runs}/eval'",
      "run_evaluate.limit = 4",
      "run_evaluate.batch_size = 8",
      "run_evaluate.max_prompt_len = 192",
      "evaluate/sampling.SamplingConfig.max_new_tokens = 8",
    ],
  )["evaluate"]
  assert sorted(ev["policies"]) == ["rl", "rrhf", "start"] and os.path.exists(runs / "eval" / "eval.md")
  assert f"on 4 prompts of {prompts}, judged by" in (runs / "eval" / "eval.md").read_text()  # the file, no split
  # Take the RL policy and the reward model out as Hugging Face folders; transformers alone runs them
  import torch
  import transformers

  out = {name: _recipe("export_hf", [f"SFT = '{runs}/{name}/checkpoints'", f"OUT = '{runs}/hf_{name}'"])["export_hf"]
         for name in ("rl", "rm")}  # fmt: skip
  assert out["rl"]["architecture"] == "Gemma3ForCausalLM" and out["rl"]["dtype"] == "bfloat16"
  assert out["rm"]["architecture"] == "Gemma3TextForSequenceClassification"
  policy = transformers.AutoModelForCausalLM.from_pretrained(out["rl"]["out"])
  tokenizer = transformers.AutoTokenizer.from_pretrained(out["rl"]["out"])
  prompt = tokenizer("Human: hi\n\nAssistant:", return_tensors="pt")
  assert policy.generate(**prompt, max_new_tokens=4, do_sample=False).shape[1] > prompt.input_ids.shape[1]
  scorer = transformers.AutoModelForSequenceClassification.from_pretrained(out["rm"]["out"])
  with torch.no_grad():
    assert scorer(**prompt).logits.shape == (1, 1)
  assert {"mean", "std", "score_bias"} <= json.load(open(os.path.join(out["rm"]["out"], "reward_stats.json"))).keys()
