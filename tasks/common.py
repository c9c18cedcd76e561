"""Shared pieces of the task registrations: record sources, output features, load reports."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import seqio
import tensorflow as tf

from rlaif_jax.data import io

# Tasks skip malformed lines and report them (a warning, and here for the data report);
# the readers themselves stop at the first bad line unless asked to skip.
SKIP_BAD_LINES = True
LOAD_REPORTS: dict[tuple[str, str], list[io.LoadReport]] = {}

KINDS = ("sft", "prompts", "pairs")


def output_features(kind: str, vocabulary) -> dict:
  if kind == "sft":
    return {"inputs": seqio.Feature(vocabulary, add_eos=False), "targets": seqio.Feature(vocabulary, add_eos=True)}
  if kind == "prompts":
    return {"inputs": seqio.Feature(vocabulary, add_eos=False)}
  if kind == "pairs":
    return {
      "inputs": seqio.Feature(vocabulary, add_eos=False),
      "response_a": seqio.Feature(vocabulary, add_eos=True),
      "response_b": seqio.Feature(vocabulary, add_eos=True),
    }
  raise ValueError(f"unknown task kind {kind!r}; kinds: {KINDS}")


def _to_dataset(records: Sequence[dict], kind: str) -> tf.data.Dataset:
  keys = {"sft": ("id", "inputs", "targets"), "prompts": ("id", "inputs")}.get(
    kind, ("id", "inputs", "response_a", "response_b", "human_choice", "metadata")
  )
  columns = {k: [r[k] for r in records] for k in keys}
  if kind == "pairs":
    columns["human_choice"] = tf.constant(columns["human_choice"], tf.int32)
  for k in keys:  # an empty split still has typed columns
    if not records:
      columns[k] = tf.constant([], tf.int32 if k == "human_choice" else tf.string)
  return tf.data.Dataset.from_tensor_slices(columns)


def register(
  name: str,
  kind: str,
  read_split: Callable[[str, bool], tuple[list[dict], list[io.LoadReport]]],
  splits: Sequence[str],
  vocabulary=None,
) -> None:
  """Registers a task whose split is read by read_split(split, skip_bad) at dataset time.

  Reading happens when a dataset is asked for, so the data root can change after import.
  """
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)

  def dataset_fn(split: str, shuffle_files: bool = False, seed=None):
    del shuffle_files, seed  # examples are shuffled by the batchers, from their own seed
    records, reports = read_split(split, SKIP_BAD_LINES)
    LOAD_REPORTS[(name, split)] = reports
    return _to_dataset(records, kind)

  seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(dataset_fn, splits=tuple(splits)),
    preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    output_features=output_features(kind, vocabulary or seqio.ByteVocabulary()),
  )


def read_files(paths: Sequence[str], parse, skip_bad: bool, name: str, unique_ids: bool = False):
  records, report = io.read_records(list(paths), parse, skip_bad=skip_bad, name=name, unique_ids=unique_ids)
  return records, [report]


def with_parser(parse, **kwargs):
  return functools.partial(parse, **kwargs) if kwargs else parse
