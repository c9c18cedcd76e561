"""Data: readers for the method's formats, vocabularies and batchers."""

from rlaif_jax.data.sft_data import SFTDataset, encode_example, split_examples
from rlaif_jax.data.tldr import FIXTURE, read_jsonl, read_tldr, tldr_prompt
from rlaif_jax.data.vocab import byte_vocabulary

__all__ = [
  "FIXTURE",
  "SFTDataset",
  "byte_vocabulary",
  "encode_example",
  "read_jsonl",
  "read_tldr",
  "split_examples",
  "tldr_prompt",
]
