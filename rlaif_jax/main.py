"""rlaif_jax command line: gin-configured pipeline stages, in the t5x manner.

  python -m rlaif_jax.main --gin_file=gin/experiments/tiny_sft.gin \\
      --gin_bindings="WORKDIR='/tmp/sft'" --gin_bindings="run_sft.num_steps=50"

Settings: each stage is a function run_<stage> (rlaif_jax/stages/<stage>.py) whose arguments are
its settings, bound in gin as run_<stage>.<argument>; gin/runs/<stage>.gin holds the values the
experiments start from, and gin/recipes/ and gin/experiments/ set the rest. --settings prints
every setting of the stages a command would run, its value and its default, and exits.

The library does not import gin: the command line's modules wire it. This one holds the flags,
the entry point and the printed results; stages/registry.py names the stages, configurables.py
registers what gin binds, gin_setup.py parses and checks the configuration, pipeline.py runs the
entries and keeps stages.json, and errors.py makes the one line an error ends a command with.
"""

from __future__ import annotations

import logging
import sys
import traceback

import gin
from absl import app, flags

from rlaif_jax import configurables, errors, gin_setup, records
from rlaif_jax.stages.registry import STAGES

_HELP_STAGES = "; ".join(f"{name}: {doc}" for name, (_, doc) in STAGES.items())

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files to load, in order (experiments include models and runs).")
flags.DEFINE_multi_string("gin_bindings", [], 'Gin bindings applied after the files, e.g. "run_sft.num_steps=10".')
flags.DEFINE_multi_string("gin_search_paths", ["."], "Folders searched for gin files and their includes.")
flags.DEFINE_list("stages", None, f"Stages to run, overriding the gin file's run.stages. Stages: {_HELP_STAGES}.")
flags.DEFINE_bool(
  "settings",
  False,
  "Print the settings of the stages that would run (run.stages or --stages): each argument's value from the gin "
  "files and bindings beside its default, configurables they reference expanded; then exit without running.",
)
flags.DEFINE_bool("verbose", False, "On an error, print its full traceback after the one-line message.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize (TPU pods, GPU clusters).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (auto-detected on TPU and SLURM).")
flags.DEFINE_integer("num_processes", None, "Number of processes (auto-detected on TPU and SLURM).")
flags.DEFINE_integer("process_id", None, "This process's index (auto-detected on TPU and SLURM).")


def initialize_distributed(enabled: bool, coordinator_address=None, num_processes=None, process_id=None) -> None:
  """jax.distributed.initialize for multi-host runs; arguments left None are auto-detected."""
  if not enabled:
    return
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices across processes (else no-op)
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
  logging.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(), jax.local_device_count())


def _main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for handler in logging.getLogger().handlers:  # absl's handler exists from here on
    handler.addFilter(errors.QuietLibraries(FLAGS.verbose))
  initialize_distributed(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  import jax

  if jax.process_index() > 0:
    logging.getLogger().setLevel(logging.WARNING)  # only process 0 writes logs
  if not FLAGS.verbose:
    errors.quiet_background_errors()
  try:
    gin_setup.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
    experiments = gin_setup.bound_experiments()  # with them, --stages picks the experiments' stages (run_command)
    if not experiments:  # a scope of the file's stages counts, even where --stages leaves it out
      gin_setup.check_scopes(FLAGS.gin_bindings, [*gin_setup.bound_stages(), *(FLAGS.stages or [])])
      gin_setup.check_workdir_macro()
    if FLAGS.stages and not experiments:
      gin.bind_parameter("run.stages", FLAGS.stages)
    if FLAGS.settings:
      tables = [configurables.settings_table(entry) for entry in gin.query_parameter("run.stages")]
      if experiments:  # they run first, each in <run.workdir>/<name>
        head = "== run.experiments: run first, each with this command's bindings (--settings on its file shows them) =="
        tables.insert(0, "\n".join([head] + [f"{name}: {file}" for name, file in experiments.items()]))
      print("\n\n".join(tables))
      return 0
    results = gin_setup.run_command(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths, FLAGS.stages)
  except (ValueError, OSError, TypeError, records.WorkdirBusy) as e:
    if FLAGS.verbose:
      traceback.print_exc()
    print(f"rlaif_jax: error: {errors.error_line(e)}", file=sys.stderr)
    return 2
  except Exception as e:  # a stage that stopped on SIGTERM after saving, or a fault no check foresaw
    from rlaif_jax.trainer import Preempted

    if isinstance(e, Preempted):
      print(f"rlaif_jax: {e}", file=sys.stderr)
      return 143
    if FLAGS.verbose:
      traceback.print_exc()
    hint = "" if FLAGS.verbose else " (rerun with --verbose for the traceback)"
    print(f"rlaif_jax: error: {type(e).__name__}: {errors.error_line(e)}{hint}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(
      "rlaif_jax: interrupted; what was saved is kept (labels, candidates and judgments up to their last chunk, "
      "training at its last checkpoint): rerun to resume",
      file=sys.stderr,
    )
    return 130
  if jax.process_index() > 0:  # one copy of the results, from process 0
    return 0
  _print_results(results)
  reports = [s["report"] for s in results.values() if isinstance(s, dict) and s.get("report")]
  if reports:
    print(f"\nReport: {reports[-1]}")
  return 0


def _print_results(results: dict) -> None:
  for stage, summary in results.items():
    if not isinstance(summary, dict):
      continue
    print(f"\n== {stage} ==")
    for key, value in summary.items():
      if key not in ("samples", "rows", "history", "policies", "tests", "ranking", "human_sheets"):
        print(f"{key}: {value}")
    if summary.get("rows"):
      _print_rows(summary["rows"])
    for i, sample in enumerate(summary.get("samples", [])):
      lines = [f"\n-- sample {i} --", sample["prompt"][-160:], f">> generated:{sample['generated']}"]
      if "reference" in sample:
        lines.append(f">> reference:{sample['reference']}")
      print("\n".join(lines))


def _print_rows(rows: list[dict]) -> None:
  columns = list(dict.fromkeys(k for r in rows for k in r if k != "skip_reasons"))
  table = [[str(r.get(c, "-")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
  print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
  for row in table:
    print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
  for r in rows:
    for reason, n in r.get("skip_reasons", {}).items():
      print(f"skipped in {r['task']}/{r['split']}: {n} x {reason}")


def main() -> None:
  """Console-script entry point (`rlaif-jax`)."""
  logging.getLogger().setLevel(logging.INFO)
  app.run(lambda argv: sys.exit(_main(argv)))


if __name__ == "__main__":
  main()
