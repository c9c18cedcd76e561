import numpy as np

from rlaif_jax import data


def test_tldr_fixture_task_matches_the_reader():
  import seqio

  import tasks  # noqa: F401

  task = seqio.get_mixture_or_task("tldr_sft_fixture")
  ds = task.get_dataset({"inputs": 1024, "targets": 256}, split="validation", shuffle=False)
  got = list(ds.as_numpy_iterator())
  _, held_out = data.split_examples(data.read_tldr(), 0.1, seed=0)
  assert len(got) == len(held_out) == 26
  vocab = data.byte_vocabulary()
  for example, (prompt, target) in zip(got, held_out):
    assert example["inputs_pretokenized"].decode() == prompt
    np.testing.assert_array_equal(example["targets"], list(vocab.encode(target)) + [vocab.eos_id])
