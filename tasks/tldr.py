"""Reddit TL;DR tasks: post -> summary, in the SFT prompt format of rlaif_jax.data.tldr."""

from __future__ import annotations

import functools

import seqio
import tensorflow as tf

from rlaif_jax import data

EVAL_FRACTION = 0.1  # the same seeded split as the SFT stage's default


def tldr_pairs_dataset(split: str, shuffle_files: bool = False, seed=None, path: str = data.FIXTURE):
  """{inputs, targets} strings of a TL;DR jsonl file; 'validation' is the seeded held-out part."""
  del shuffle_files, seed  # one file; seqio shuffles examples
  train, held_out = data.split_examples(data.read_tldr(path), EVAL_FRACTION, seed=0)
  chosen = {"train": train, "validation": held_out}[split]
  return tf.data.Dataset.from_tensor_slices({"inputs": [p for p, _ in chosen], "targets": [t for _, t in chosen]})


def register_tldr_sft(name: str, path: str, vocabulary=None) -> None:
  """Registers an SFT task on a TL;DR-format jsonl file (once per name)."""
  if name in seqio.TaskRegistry.names():
    return
  vocabulary = vocabulary or seqio.ByteVocabulary()
  seqio.TaskRegistry.add(
    name,
    source=seqio.FunctionDataSource(functools.partial(tldr_pairs_dataset, path=path), splits=("train", "validation")),
    preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
    output_features={
      "inputs": seqio.Feature(vocabulary, add_eos=False),
      "targets": seqio.Feature(vocabulary, add_eos=True),
    },
  )


register_tldr_sft("tldr_sft_fixture", data.FIXTURE)
