import json
import logging
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # every test here runs the command line in a process of its own

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = "--gin_file=gin/experiments/tiny_sft.gin"
# Every file a researcher runs: the experiments and the recipes for their own data.
RUNNABLE = [f"{d}/{f}" for d in ("experiments", "recipes") for f in sorted(os.listdir(os.path.join(ROOT, "gin", d)))]


def _run(*args, devices=1, timeout=300):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "rlaif_jax.main", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_help_lists_stages_and_where_settings_live():
  out = _run("--help")
  assert out.returncode in (0, 1)  # absl exits 1 after printing help
  text = " ".join(out.stdout.split())
  assert "Stages: data: load seqio tasks" in text and "sft: supervised fine-tuning" in text
  assert "bound in gin as run_<stage>.<argument>; gin/runs/<stage>.gin holds" in text and "--settings" in text


def test_settings_prints_each_setting_with_its_value_and_default_and_runs_nothing(tmp_path):
  out = _run(
    "--gin_file=gin/recipes/rl_my_prompts.gin",
    f"--gin_bindings=WORKDIR='{tmp_path}/rl'",
    "--gin_bindings=rl.RLConfig.kl_coef=0.2",
    "--settings",
  )
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[0].startswith("== rl: REINFORCE")
  assert f"run_rl.workdir = %WORKDIR = '{tmp_path}/rl'  (required)" in lines
  assert "run_rl.task = %PROMPTS = <not set, required>  (default 'tldr_prompts')" in lines  # %gin.REQUIRED
  assert "    rl.RLConfig.kl_coef = 0.2  (default 0.05)" in lines  # a referenced configurable, expanded
  assert "    rl.RolloutSampling.top_p = 1.0" in lines  # not bound: its default
  assert (
    "run_rl.seed = 0" in lines and "    scorers.RewardModelScorer.workdir = %RM = 'runs/my_rm'  (default None)" in lines
  )
  assert not os.path.exists(tmp_path / "rl")  # nothing ran
  assert "cuInit" not in out.stderr and "cuda drivers" not in out.stderr  # TensorFlow's CUDA probe is quiet


@pytest.mark.parametrize(
  "args, message",
  [
    (["--gin_file=gin/experiments/nope.gin"], "--gin_file=gin/experiments/nope.gin: no such file"),
    ([EXPERIMENT, "--gin_bindings=run_sft.batch_sise=4"], "batch_sise"),
    ([EXPERIMENT, "--gin_bindings=run_sft.num_steps=="], "bad gin configuration"),
    ([EXPERIMENT, "--stages=sft,distill"], "unknown stage 'distill'"),
    ([EXPERIMENT, "--stages=sft,rlhf/rll"], "unknown stage 'rlhf/rll'"),
    ([EXPERIMENT, "--stages=a/b/sft"], "unknown stage 'a/b/sft'"),
    ([EXPERIMENT, "--gin_bindings=NUM_STEP=4"], "no setting uses the macro NUM_STEP; did you mean NUM_STEPS?"),
    ([EXPERIMENT, "--gin_bindings=NUM_STEPS=-3"], "run_sft.num_steps=-3: must be a positive integer"),
    ([EXPERIMENT, "--gin_bindings=run_sft.batch_size=0"], "run_sft.batch_size=0: must be a positive integer"),
    ([EXPERIMENT, "--gin_bindings=sft.Fit.eval_every=-1"], "FitConfig.eval_every=-1: must be an integer >= 0"),
    (
      ["--gin_file=gin/recipes/label_my_pairs.gin", "--gin_bindings=PAIRS='mine/pairs.jsonl'"],
      "run_label.task='mine/pairs.jsonl': no such file or folder",
    ),
    (
      ["--gin_file=gin/recipes/rm_my_labels.gin", "--gin_bindings=PAIRS='data/p_{split}.jsonl'"],
      "run_rm.task='data/p_{split}.jsonl': no such file or folder (data/p_train.jsonl)",
    ),
    (
      ["--gin_file=gin/recipes/rl_my_prompts.gin", "--gin_bindings=PROMPTS='rlaif_jax/labeling/exemplars.jsonl'"],
      "run_rl.scorer.workdir='runs/my_rm': no such file or folder (runs/my_rm/checkpoints",
    ),
    (  # a recipe's %gin.REQUIRED macros are named, with how to set them, before anything runs
      ["--gin_file=gin/recipes/rm_my_labels.gin", "--gin_bindings=LABELS='l.jsonl'"],
      "set PAIRS (the gin file's header says what each is): --gin_bindings=\"PAIRS='...'\"",
    ),
    (
      [
        "--gin_file=gin/recipes/evaluate_checkpoints.gin",
        "--gin_bindings=PROMPTS='rlaif_jax/labeling/exemplars.jsonl'",
        "--gin_bindings=POLICIES={'a': 'runs/x/checkpoints'}",
      ],
      "run_evaluate.policies['a']='runs/x/checkpoints': no such file or folder",
    ),
    (
      [EXPERIMENT, "--gin_bindings=run_sft.task='rlaif_jax/labeling/exemplars.jsonl'"],
      "task 'rlaif_jax/labeling/exemplars.jsonl' is a file: this stage reads registered seqio tasks",
    ),
  ],
)
def test_bad_configuration_fails_clearly(args, message):
  out = _run(*args)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "rlaif_jax: error:" in out.stderr and message in out.stderr, out.stderr[-2000:]
  assert "Traceback" not in out.stderr


def test_batch_that_does_not_fit_the_mesh_names_the_setting(tmp_path):
  out = _run(
    EXPERIMENT,
    f"--gin_bindings=WORKDIR='{tmp_path}'",
    "--gin_bindings=run_sft.batch_size=12",
    "--gin_bindings=run_sft.mesh_shape={'data': 8}",
    devices=8,
  )
  assert out.returncode == 2
  assert "batch_size=12 is not divisible by the mesh's data parallelism data*fsdp=8" in out.stderr


@pytest.mark.slow
def test_default_job_end_to_end(tmp_path):
  """The README's job, shortened: trains, evaluates, writes curves, samples and a summary."""
  workdir = tmp_path / "sft"
  out = _run(
    EXPERIMENT,
    f"--gin_bindings=WORKDIR='{workdir}'",
    "--gin_bindings=NUM_STEPS=6",
    "--gin_bindings=run_sft.max_len=128",
    "--gin_bindings=sft.Fit.eval_every=3",
    "--gin_bindings=sft.Fit.log_every=2",
    "--gin_bindings=sft_samples/sampling.SamplingConfig.max_new_tokens=8",
    "--gin_bindings=run_sft.mesh_shape={'data': 2}",
    devices=2,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "== sft ==" in out.stdout and "-- sample 2 --" in out.stdout
  summary = json.load(open(workdir / "summary.json"))
  assert summary["steps"] == 6 and summary["eval_loss"] > 0
  runtime = {"processes": 1, "devices": 2, "platform": "cpu", "device_kind": "cpu"}
  assert summary["runtime"] == {**runtime, "mesh": {"data": 2, "fsdp": 1, "tensor": 1}}
  assert "run_sft: 1 process(es), 2 cpu device(s) (cpu), mesh data=2 x fsdp=1 x tensor=1" in out.stderr
  assert len(open(workdir / "samples.jsonl").readlines()) == 3
  assert (workdir / "curves.png").stat().st_size > 1000
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]
  assert [r["step"] for r in records if "eval/loss" in r] == [3, 6]


def test_data_stage_reports_counts(tmp_path):
  out = _run(
    "--gin_file=gin/runs/data.gin",
    "--gin_bindings=run_data_report.tasks=['hh_helpful_pairs']",
    f"--gin_bindings=run_data_report.workdir='{tmp_path}'",
  )
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.load(open(tmp_path / "data_report.json"))
  summary = json.load(open(tmp_path / "summary.json"))  # a stage that writes none gets its summary
  assert summary["runtime"]["processes"] == 1 and "mesh" not in summary["runtime"] and "rows" in summary
  assert [(r["task"], r["split"], r["examples"]) for r in report["rows"]] == [
    ("hh_helpful_pairs", "train", 24),
    ("hh_helpful_pairs", "test", 12),
  ]
  assert "hh_helpful_pairs  train  24" in out.stdout


def test_ci_runs_the_readme_test_command():
  readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  commands = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
  assert len(commands) >= 2
  ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
  assert commands[1].strip() in ci


def test_rrhf_stage_from_the_cli_with_human_ranks(tmp_path):
  out = _run(
    "--gin_file=gin/models/tiny.gin",
    "--gin_file=gin/runs/rrhf.gin",
    f"--gin_bindings=WORKDIR='{tmp_path}'",
    "--gin_bindings=run_rrhf.scorer=@scorers.HumanScorer()",
    "--gin_bindings=rrhf.Sources.policy_temperatures=()",
    "--gin_bindings=RRHF_STEPS=4",
    "--gin_bindings=run_rrhf.resample_every=2",
    "--gin_bindings=run_rrhf.limit=8",
    "--gin_bindings=run_rrhf.max_len=128",
    "--gin_bindings=rrhf.Sources.max_new_tokens=4",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["rounds"] == 2 and summary["sources"] == ["dataset0", "dataset1"]
  assert "-- sample 0 --" in out.stdout and ">> generated:" in out.stdout


@pytest.mark.parametrize("experiment", RUNNABLE)
def test_every_experiment_file_parses(experiment):
  import gin

  from rlaif_jax import configurables, gin_setup
  from rlaif_jax.stages.registry import STAGES

  gin.clear_config()
  try:
    gin_setup.parse_gin([f"gin/{experiment}"], [], [ROOT])
    stages = gin.query_parameter("run.stages")
    assert stages and all(s.split("/")[-1] in STAGES and s.count("/") <= 1 for s in stages)
    for entry in stages:  # what stages.json records to tell a rerun with other settings
      settings = configurables.entry_settings(entry)
      assert json.loads(json.dumps(settings)) == settings == configurables.entry_settings(entry)
  finally:
    gin.clear_config()


def _strings(value):
  if isinstance(value, str):
    yield value
  elif isinstance(value, (list, tuple, dict)):
    for v in value.values() if isinstance(value, dict) else value:
      yield from _strings(v)


@pytest.mark.parametrize("experiment", RUNNABLE)
def test_every_folder_of_an_experiment_follows_workdir(experiment):
  """--gin_bindings="WORKDIR='...'" moves every stage's folder, file and checkpoint path."""
  import gin

  from rlaif_jax import gin_setup

  gin.clear_config()
  try:
    gin_setup.parse_gin([f"gin/{experiment}"], ["WORKDIR = '/elsewhere/mine'"], [ROOT])
    inputs = ("LABELS", "RM")  # recipes' inputs: the outputs of the recipe before them, by default
    config = gin.config._CONFIG.items()
    paths = [s for (scope, _), params in config if scope not in inputs for v in params.values() for s in _strings(v)]
    assert "/elsewhere/mine" in paths
    assert [p for p in paths if p.startswith("runs/") or "{" in p] == []
  finally:
    gin.clear_config()


@pytest.mark.parametrize(
  "bindings, message",
  [
    (["run_sft.workdir = '{WORKDIRS}/sft'"], "run_sft.workdir: {WORKDIRS} names no macro set to a plain string"),
    (["WORKDIR = '{WORKDIR}/x'"], "{WORKDIR} names no macro"),
  ],
)
def test_a_placeholder_without_its_macro_is_an_error(bindings, message):
  import gin

  from rlaif_jax import gin_setup

  gin.clear_config()
  try:
    with pytest.raises(ValueError, match=re.escape(message)):
      gin_setup.parse_gin(["gin/experiments/tiny_sft.gin"], bindings, [ROOT])
  finally:
    gin.clear_config()


def test_a_finished_stage_is_skipped_only_with_the_settings_it_ran_with(tmp_path, caplog):
  import gin

  from rlaif_jax import gin_setup, pipeline

  caplog.set_level(logging.INFO)
  gin.clear_config()
  try:
    gin_setup.parse_gin(
      ["gin/runs/data.gin"],
      [
        f"run.workdir='{tmp_path}'",
        "run_data_report.tasks=['hh_helpful_pairs']",
        f"run_data_report.workdir='{tmp_path}'",
      ],
      [ROOT],
    )
    first = pipeline.run()["data"]
    assert json.load(open(tmp_path / "stages.json"))["data"]["settings"]["max_len"] == "512"
    caplog.clear()
    assert pipeline.run()["data"] == first and "finished in an earlier run with these settings" in caplog.text
    gin.bind_parameter("run_data_report.max_len", 64)
    caplog.clear()
    pipeline.run()
    assert "stage data: finished in an earlier run, but settings changed (max_len): running it again" in caplog.text
    assert json.load(open(tmp_path / "stages.json"))["data"]["settings"]["max_len"] == "64"
    assert "run_data_report.max_len = 64" in (tmp_path / "config.gin").read_text()  # the settings it ran with
  finally:
    gin.clear_config()


def test_rl_stage_from_the_cli_with_the_direct_labeler(tmp_path):
  out = _run(
    "--gin_file=gin/models/tiny.gin",
    "--gin_file=gin/runs/rl.gin",
    f"--gin_bindings=WORKDIR='{tmp_path}'",
    "--gin_bindings=run_rl.scorer=@scorers.DirectScorer()",
    "--gin_bindings=RL_ITERATIONS=2",
    "--gin_bindings=run_rl.batch_size=4",
    "--gin_bindings=run_rl.max_prompt_len=64",
    "--gin_bindings=rl.RolloutSampling.max_new_tokens=8",
    "--gin_bindings=rl.RLConfig.target_kl=1.0",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["iterations"] == 2 and summary["compilations"]["update_step"] == 1
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2] and all(-1 <= r["reward_raw_mean"] <= 1 for r in rows)
  assert os.path.exists(tmp_path / "curves.png") and "== rl ==" in out.stdout


@pytest.mark.parametrize(
  "estimator,only", [("rloo", "sequence_reward_mean"), ("grpo", "clip_fraction"), ("ppo", "clip_fraction")]
)
def test_rl_stage_from_the_cli_with_another_estimator(tmp_path, estimator, only):
  """gin/runs/rl_<estimator>.gin swaps REINFORCE for RLOO or GRPO (K = 4 responses per prompt, no
  value model) or PPO (one response per prompt, a value model, 4 epochs x 4 minibatches)."""
  ppo = estimator == "ppo"
  out = _run(
    "--gin_file=gin/models/tiny.gin",
    f"--gin_file=gin/runs/rl_{estimator}.gin",
    f"--gin_bindings=WORKDIR='{tmp_path}'",
    "--gin_bindings=run_rl.scorer=@scorers.DirectScorer()",
    "--gin_bindings=RL_ITERATIONS=2",
    f"--gin_bindings=run_rl.batch_size={4 if ppo else 2}",  # PPO's 4 minibatches: one prompt each
    "--gin_bindings=run_rl.max_prompt_len=64",
    "--gin_bindings=rl.RolloutSampling.max_new_tokens=8",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.load(open(tmp_path / "summary.json"))
  assert summary["compilations"]["update_step"] == 1 and (summary["explained_variance_last"] is None) != ppo
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2] and all(only in r and ("value_loss" in r) == ppo for r in rows)
  samples = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
  assert len({s["prompt"] for s in samples[:4]}) == (4 if ppo else 1)  # RLOO's, GRPO's first prompt's K = 4 responses
  assert f"run_rl.estimator = @rl.{estimator.capitalize()}" in open(tmp_path / "config.gin").read()


def test_the_docs_knob_tables_give_the_codes_defaults():
  """Every `| `owner.setting` | `default` | ... |` row of the knob tables in README.md and docs/*.md
  states the default the code has (a stage function's or a config class's)."""
  import ast
  import dataclasses
  import glob
  import inspect

  from rlaif_jax import rl, rrhf
  from rlaif_jax.labeling import PromptConfig
  from rlaif_jax.stages.registry import STAGES

  owners = {f"run_{name}": fn for name, (fn, _) in STAGES.items()}
  owners.update({"labeling.PromptConfig": PromptConfig, "rl.RLConfig": rl.RLConfig, "rrhf.Sources": rrhf.Sources})
  owners.update({"rl.Rloo": rl.Rloo.build, "rl.Grpo": rl.Grpo.build, "rl.Ppo": rl.Ppo.build})
  owners["rl.OnlineDpo"] = rl.OnlineDpo.build
  rollouts = inspect.signature(STAGES["rl"][0]).parameters["sampling_config"].default  # and rl.gin's
  owners["rl.RolloutSampling"] = rollouts
  pages = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
  checked = 0
  for page in pages:
    text = open(page, encoding="utf-8").read()
    for owner, name, default in re.findall(r"^\| `([\w.]+)\.(\w+)` \| `([^`]*)` \|", text, re.M):
      if owner not in owners:
        continue
      target = owners[owner]
      if dataclasses.is_dataclass(target) and not isinstance(target, type):  # a stage's default instance
        actual = getattr(target, name)
      elif dataclasses.is_dataclass(target):
        actual = {f.name: f.default for f in dataclasses.fields(target)}[name]
      else:
        actual = inspect.signature(target).parameters[name].default
      where = os.path.relpath(page, ROOT)
      assert ast.literal_eval(default) == actual, (
        f"{where} says {owner}.{name} defaults to {default}, the code {actual!r}"
      )
      checked += 1
  assert checked >= 35


def test_input_checks_find_the_bundled_exemplars_from_any_folder(tmp_path, monkeypatch):
  from rlaif_jax.stages import base

  monkeypatch.chdir(tmp_path)  # the pipeline test runs the CLI from a folder of its own
  base.check_inputs("run_label", {"exemplars_file": "rlaif_jax/labeling/exemplars.jsonl", "task": "hh_prompts"})
  with pytest.raises(FileNotFoundError, match=r"run_label.exemplars_file='mine/ex.jsonl': no such file or folder$"):
    base.check_inputs("run_label", {"exemplars_file": "mine/ex.jsonl"})


def test_a_command_of_experiments_runs_each_in_its_folder_then_its_own_stages(tmp_path):
  """run.experiments (the three-task command's mechanism): each experiment runs as a command of its
  own in <run.workdir>/<name> with the command's bindings (a macro only the experiments use is no
  error), --stages replaces the experiments' stages, then the configuration's own stages run."""
  tasks = {"a": "hh_helpful_pairs", "b": "hh_harmless_pairs"}
  for name, task in tasks.items():
    (tmp_path / f"{name}.gin").write_text(
      "run.stages = ['sft']\nrun.workdir = %WORKDIR\nrun_data_report.workdir = %WORKDIR\n"
      f"run_data_report.tasks = ['{task}']\nrun_data_report.max_len = %MAX_LEN\nMAX_LEN = 512\n"
    )
  (tmp_path / "all.gin").write_text(
    f"WORKDIR = '{tmp_path}/all'\nrun.workdir = %WORKDIR\n"
    f"run.experiments = {{'a': '{tmp_path}/a.gin', 'b': '{tmp_path}/b.gin'}}\n"
    "run.stages = ['data']\nrun_data_report.workdir = '{WORKDIR}/own'\nrun_data_report.tasks = ['tldr_sft']\n"
  )
  out = _run(f"--gin_file={tmp_path}/all.gin", "--gin_bindings=MAX_LEN=64", "--stages=data")
  assert out.returncode == 0, out.stderr[-3000:]
  for name, task in {**tasks, "own": "tldr_sft"}.items():
    report = json.load(open(tmp_path / "all" / name / "data_report.json"))
    assert {r["task"] for r in report["rows"]} == {task}, name
  for name in tasks:
    settings = json.load(open(tmp_path / "all" / name / "stages.json"))["data"]["settings"]
    assert settings["max_len"] == {"%": "MAX_LEN", "value": "64"}, settings
    assert settings["workdir"]["value"] == repr(f"{tmp_path}/all/{name}"), settings
  assert "== a: data ==" in out.stdout and "== b: data ==" in out.stdout and "== data ==" in out.stdout
