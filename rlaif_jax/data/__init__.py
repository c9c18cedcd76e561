"""Data: readers for the method's formats, the data root, converters, batches, vocabularies.

seqio tasks over these readers are registered by `rlaif_jax.tasks` (the repository's tasks/
folder).
"""

from rlaif_jax.data import encoder
from rlaif_jax.data.batches import ArrayDataset
from rlaif_jax.data.chat import FORMATS as CHAT_FORMATS
from rlaif_jax.data.chat import ChatFormat, ChatVocabulary, with_chat
from rlaif_jax.data.converters import CONVERTERS, pack_sft_features, pair_features, prompt_features, sft_features
from rlaif_jax.data.examples import file_for, load_examples, load_pairs, pair_digest, source_name
from rlaif_jax.data.formats import (
  ASSISTANT_CUE,
  HIGH_CONFIDENCE,
  TLDR_CUE,
  parse_candidate,
  parse_comparison,
  parse_hh_pair,
  parse_hh_prompt,
  parse_hh_sft,
  parse_prompt,
  parse_tldr_prompt,
  parse_tldr_sft,
  split_dialogue,
  tldr_prompt,
)
from rlaif_jax.data.io import DataError, FieldError, LoadReport, read_records
from rlaif_jax.data.paths import data_root, set_data_root
from rlaif_jax.data.pipeline import is_file, seqio_task, task_arrays, task_examples
from rlaif_jax.data.vocab import byte_vocabulary, sentencepiece_vocabulary

__all__ = [
  "CHAT_FORMATS",
  "ChatFormat",
  "ChatVocabulary",
  "encoder",
  "with_chat",
  "ASSISTANT_CUE",
  "CONVERTERS",
  "HIGH_CONFIDENCE",
  "TLDR_CUE",
  "ArrayDataset",
  "as_text",
  "DataError",
  "FieldError",
  "LoadReport",
  "byte_vocabulary",
  "data_root",
  "file_for",
  "is_file",
  "load_examples",
  "load_pairs",
  "pair_digest",
  "pack_sft_features",
  "pair_features",
  "parse_candidate",
  "parse_comparison",
  "parse_hh_pair",
  "parse_hh_prompt",
  "parse_hh_sft",
  "parse_prompt",
  "parse_tldr_prompt",
  "parse_tldr_sft",
  "prompt_features",
  "read_records",
  "sentencepiece_vocabulary",
  "set_data_root",
  "sft_features",
  "split_dialogue",
  "task_arrays",
  "seqio_task",
  "source_name",
  "task_examples",
  "tldr_prompt",
]
