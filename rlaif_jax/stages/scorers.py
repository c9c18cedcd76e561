"""What the RL-style stages share: examples with their responses, and the scorers that rate
(input, response) texts: a reward model, the AI labeler's direct 1-10 score, or human ranks."""

from __future__ import annotations

import numpy as np

from rlaif_jax import data, models, partitioning, reward
from rlaif_jax.labeling import Labeler
from rlaif_jax.labeling.labeler import load_model_params

SCORERS = ("rm", "direct", "human")


def vocabulary(pretrained: str | None):
  """The byte vocabulary, or a pretrained model's SentencePiece vocabulary (converted once)."""
  if not pretrained:
    return data.byte_vocabulary()
  from rlaif_jax.models import pretrained as pretrained_lib

  return pretrained_lib.load_converted(pretrained, partitioning.make_mesh(), weights=False).vocab


def load_examples(task: str, split: str, limit: int | None) -> list[dict]:
  """{inputs, responses, human_scores} from a pair, SFT or prompts task."""
  out = []
  for ex in data.task_examples(task, split)[:limit]:
    if "response_a_pretokenized" in ex:
      responses = [data.as_text(ex["response_a_pretokenized"]), data.as_text(ex["response_b_pretokenized"])]
      choice = int(ex["human_choice"])
      human = None if choice < 0 else ([1.0, 0.0] if choice == 0 else [0.0, 1.0])
    elif "targets_pretokenized" in ex:
      responses, human = [data.as_text(ex["targets_pretokenized"])], [1.0]
    else:
      responses, human = [], None
    out.append({"inputs": data.as_text(ex["inputs_pretokenized"]), "responses": responses, "human_scores": human})
  return out


def build_labeler(
  model_config, checkpoint, max_len, batch_size, mesh, name, seed=0, pretrained_source=None, vocab=None
):
  """A labeler from a trainer checkpoint (vocab, bytes by default) or a pretrained model (its own
  config, weights and SentencePiece vocabulary; model_config then only gives the dtype)."""
  if pretrained_source:
    from rlaif_jax.models import pretrained

    dtype = model_config.dtype if model_config is not None else None
    loaded = pretrained.load_converted(pretrained_source, mesh, dtype=dtype, weights=not checkpoint)
    model = models.Transformer(loaded.config)
    # checkpoint: fine-tuned weights of the pretrained model, read instead of its own
    params = load_model_params(model, mesh, checkpoint, seed) if checkpoint else loaded.params
    return Labeler(model, params, loaded.vocab, name=name, max_len=max_len, batch_size=batch_size, mesh=mesh)
  model = models.Transformer(model_config)
  params = load_model_params(model, mesh, checkpoint, seed)
  vocab = vocab or data.byte_vocabulary()
  return Labeler(model, params, vocab, name=name, max_len=max_len, batch_size=batch_size, mesh=mesh)


def build_scorer(
  kind,
  examples,
  model_config,
  rm_workdir,
  labeler_checkpoint,
  labeler_task,
  max_len,
  mesh,
  stage="run_rrhf",
  normalize_rm=False,
  vocab=None,
  labeler_pretrained=None,
):
  """(inputs, responses) -> scores, from a reward model, the direct labeler, or human ranks.

  normalize_rm standardizes RM scores with the statistics saved beside the reward model;
  vocab is the models' vocabulary (bytes by default); labeler_pretrained a pretrained labeler
  for 'direct' (labeler_checkpoint then names fine-tuned weights of it)."""
  vocab = vocab or data.byte_vocabulary()
  if kind == "rm":
    if not rm_workdir:
      raise ValueError(f"{stage}.scorer='rm' needs {stage}.rm_workdir (a reward-model run folder)")
    rm = reward.RewardScorer.from_workdir(
      rm_workdir, model_config, vocab, max_len=max_len, batch_size=partitioning.data_parallel_size(mesh) * 4, mesh=mesh
    )
    return lambda inputs, responses: rm.score(inputs, responses, normalize=normalize_rm)
  if kind == "direct":
    batch = partitioning.data_parallel_size(mesh) * 4
    labeler = build_labeler(
      model_config, labeler_checkpoint, max(max_len, 512), batch, mesh, "labeler", 0, labeler_pretrained, vocab
    )
    return lambda inputs, responses: labeler.direct_scores(labeler_task, inputs, responses)
  if kind == "human":
    table = {
      (ex["inputs"], r): s for ex in examples if ex["human_scores"] for r, s in zip(ex["responses"], ex["human_scores"])
    }

    def human(inputs, responses):
      missing = [i for i, key in enumerate(zip(inputs, responses)) if key not in table]
      if missing:
        raise ValueError(
          f"{stage}.scorer='human' scores only the dataset's ranked responses; set sources.policy_temperatures=()"
        )
      return np.asarray([table[key] for key in zip(inputs, responses)], np.float32)

    return human
  raise ValueError(f"{stage}.scorer={kind!r}; scorers: {SCORERS}")
