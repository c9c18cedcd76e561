"""ModelSource: where a model comes from, said once for every role.

The policy, its frozen reference, the value model, the AI labeler, the judge and the reward
model are each one `ModelSource`: an architecture (`config`, e.g. a preset), a pretrained
source (a preset name such as "gemma3-270m", a GGUF file, a Hugging Face folder or a
converted folder; it brings its own config, weights and SentencePiece vocabulary, converted
once into the cache) and/or a trainer checkpoint of fine-tuned weights, read instead of the
pretrained ones. With neither weights, parameters are a random init from `seed`.

  loaded = ModelSource(config=models.tiny(), checkpoint="runs/sft/checkpoints").load(mesh)
  loaded.model, loaded.params, loaded.vocab
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import jax

from rlaif_jax import partitioning
from rlaif_jax.checkpoints import ADAPTERS_FILE
from rlaif_jax.models import lora as lora_lib
from rlaif_jax.models.config import TransformerConfig
from rlaif_jax.models.lora import LoraConfig
from rlaif_jax.models.params import load_model_params, param_shardings
from rlaif_jax.models.transformer import Transformer, init_params


@dataclasses.dataclass
class LoadedModel:
  model: Transformer
  params: Any  # placed in the shardings of the model's logical axes
  vocab: Any  # seqio vocabulary: bytes, or the pretrained model's own; a data.ChatVocabulary in a chat format
  adapters_of: dict | None = None  # with fresh LoRA adapters: their settings and base (ModelSource.load)

  def with_lora(self, lora: LoraConfig | None, mesh, rules=partitioning.DEFAULT_RULES, seed: int = 0) -> LoadedModel:
    """The model with fresh adapters (models.lora) beside the same parameter arrays, no copy: its
    outputs are exactly this model's until the adapters train. None: this model as it is."""
    if lora is None:
      return self
    model = self.model.clone(lora=lora)
    _, shardings = param_shardings(model, mesh, rules)
    fresh = lambda r: lora_lib.adapters(init_params(model, r))  # noqa: E731
    with partitioning.axis_rules(mesh, rules):
      new = jax.jit(fresh, out_shardings=lora_lib.adapters(shardings))(jax.random.PRNGKey(seed))
    return LoadedModel(model, lora_lib.merge(new, self.params), self.vocab)

  def with_trained(self, checkpoint: str, mesh, rules=partitioning.DEFAULT_RULES, step: int | None = None) -> Any:
    """This LoRA model's parameters with the adapters (and head) a checkpoint of it holds, beside
    the same frozen arrays."""
    from rlaif_jax.checkpoints import abstract_like, load_params

    abstract, shardings = param_shardings(self.model, mesh, rules)
    target = abstract_like(lora_lib.split(abstract)[0], lora_lib.split(shardings)[0])
    return lora_lib.merge(load_params(checkpoint, target, step=step), self.frozen)

  @property
  def frozen(self) -> Any:
    """What training leaves alone: with LoRA the base (params without adapters and head), else None."""
    return lora_lib.frozen_part(self.params) if self.model.lora is not None else None


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """A model's architecture, pretrained weights and fine-tuned checkpoint; see the module doc."""

  config: TransformerConfig | None = None  # with `pretrained`, only its dtype is used
  pretrained: str | None = None  # preset name, GGUF file, HF folder or converted folder
  checkpoint: str | None = None  # a trainer's checkpoints folder: fine-tuned weights
  seed: int = 0  # random init when neither pretrained nor checkpoint gives weights
  step: int | None = None  # the checkpoint's step to load (None: its latest)
  # How an instruction-tuned model wants its prompts (data.chat), as a policy or as a labeler:
  # None, plain text; 'auto', the checkpoint's own chat template (plain text if it has none); or
  # a format's name ('chatml', 'gemma', 'llama3'). Its vocabulary is then a data.ChatVocabulary.
  chat_format: str | None = None

  def __post_init__(self):
    if self.config is None and not self.pretrained:
      raise ValueError("ModelSource needs a config (e.g. a preset) or a pretrained source")

  def replace(self, **changes) -> ModelSource:
    return dataclasses.replace(self, **changes)

  @property
  def name(self) -> str:
    """A readable name: the run folder of a checkpoint, else the pretrained source, else random-init."""
    if self.checkpoint:
      path = os.path.normpath(os.path.abspath(self.checkpoint))
      base = os.path.basename(path)
      return os.path.basename(os.path.dirname(path)) if base == "checkpoints" else base
    return self.pretrained or "random-init"

  @property
  def identity(self) -> str:
    """Which weights these are, for telling roles apart (e.g. a judge that is also the labeler) and
    for what records were made with: the checkpoint folder with its step and a digest of that
    step's checksums (so weights trained again in the same folder are other weights), else the
    pretrained source, else the random init's seed."""
    if self.checkpoint:
      from rlaif_jax.checkpoints import step_identity

      return "checkpoint:" + step_identity(self.checkpoint, self.step)
    if self.pretrained:
      where = os.path.normpath(os.path.abspath(self.pretrained)) if os.path.exists(self.pretrained) else self.pretrained
      return "pretrained:" + where
    config = hashlib.sha256(repr(self.config).encode()).hexdigest()[:8]
    return f"random-init:config={config}:seed={self.seed}"

  @property
  def prompted_identity(self) -> str:
    """identity, with the chat format where one is set and the encoder's version (data.encoder:
    version 2 puts BOS first): what a record of this model's generations or judgments was made with."""
    from rlaif_jax.data import encoder

    chat = f"|chat_format={self.chat_format}" if self.chat_format not in (None, "none") else ""
    return f"{self.identity}{chat}|encoder={encoder.VERSION}"

  def _pretrained(self, mesh=None, rules=None, weights: bool = False):
    from rlaif_jax.models import pretrained

    dtype = self.config.dtype if self.config is not None else None
    return pretrained.load_converted(self.pretrained, mesh, rules, dtype=dtype, weights=weights)

  def architecture(self, mesh=None) -> TransformerConfig:
    """The decoder's config: the pretrained source's own (its weights not read), else `config`."""
    return self._pretrained(mesh or partitioning.make_mesh()).config if self.pretrained else self.config

  def vocabulary(self):
    """The byte vocabulary, or the pretrained model's own (SentencePiece or BPE); in chat_format."""
    return self._in_chat_format(self._pretrained(partitioning.make_mesh()).vocab if self.pretrained else None)

  def _in_chat_format(self, vocab):
    from rlaif_jax import data

    return data.with_chat(vocab or data.byte_vocabulary(), self.chat_format, "ModelSource.chat_format")

  def load(
    self,
    mesh,
    rules=partitioning.DEFAULT_RULES,
    *,
    scalar_head: bool = False,
    lora: LoraConfig | None = None,
    seed: int = 0,
  ) -> LoadedModel:
    """The model and its parameters placed straight into their shardings on mesh.

    scalar_head builds the reward/value variant: its checkpoint must hold a scalar head (a
    pretrained start has none, so its weights are not read for it). A checkpoint of LoRA
    adapters (adapters.json beside it) is read onto the base it was trained on, merged. With
    lora, the model gets fresh adapters (LoadedModel.with_lora, from seed) for a LoRA run to
    train, and `adapters_of` says what base they belong to."""
    pre = None
    if self.checkpoint and os.path.exists(os.path.join(self.checkpoint, ADAPTERS_FILE)):
      loaded = self._load_adapters(mesh, rules, scalar_head)
    else:
      if self.pretrained:
        read_weights = self.checkpoint is None and not scalar_head
        pre = self._pretrained(mesh, rules, weights=read_weights)
      vocab = self._in_chat_format(pre.vocab if pre else None)
      if self.checkpoint:  # trained to read the ids this vocabulary, BOS and chat format make?
        from rlaif_jax.checkpoints import check_reading
        from rlaif_jax.data import encoder

        check_reading(self.checkpoint, encoder.reading(vocab))
      model = Transformer(pre.config if pre else self.config, scalar_head=scalar_head)
      if self.checkpoint:
        params = load_model_params(model, mesh, self.checkpoint, rules=rules, step=self.step)
      elif pre is not None and pre.params is not None:
        params = pre.params
      else:
        params = load_model_params(model, mesh, None, self.seed, rules)
      loaded = LoadedModel(model, params, vocab)
    if lora is None:
      return loaded
    adapted = loaded.with_lora(lora, mesh, rules, seed)
    adapted.adapters_of = self._base_record(lora)
    return adapted

  def _base_record(self, lora: LoraConfig) -> dict:
    """What adapters trained on this source's weights record (adapters.json): their settings and
    the base, to read them onto it again and to refuse them on any other."""
    step = self.step
    if self.checkpoint and step is None:
      from rlaif_jax.checkpoints import latest_step_dir

      step = latest_step_dir(self.checkpoint)
    checkpoint = os.path.abspath(self.checkpoint) if self.checkpoint else None
    return {
      "lora": {"rank": lora.rank, "alpha": lora.alpha, "targets": list(lora.targets)},
      "base": {"checkpoint": checkpoint, "step": step, "seed": self.seed},
      "base_identity": self.identity,
    }

  def _load_adapters(self, mesh, rules, scalar_head: bool) -> LoadedModel:
    """A LoRA run's checkpoint: its base loaded as recorded (a CheckpointError when that base is
    no longer the one the adapters were trained on), the adapters (and head) read and merged in."""
    trained, lora = self.adapters(mesh, rules, scalar_head)
    plain = trained.model.clone(lora=None)
    merge = jax.jit(lambda p: lora_lib.merged_weights(p, lora), out_shardings=param_shardings(plain, mesh, rules)[1])
    with partitioning.axis_rules(mesh, rules):
      return LoadedModel(plain, merge(trained.params), trained.vocab)

  def adapters(self, mesh, rules=partitioning.DEFAULT_RULES, scalar_head: bool = False):
    """(LoadedModel, LoraConfig) of a LoRA run's checkpoint, unmerged: the model with
    adapters and its parameters, the base as recorded beside the adapters (and head) from the
    checkpoint. A CheckpointError when the folder holds no adapters or their base is no longer the
    one they were trained on."""
    from rlaif_jax.checkpoints import CheckpointError, check_reading
    from rlaif_jax.data import encoder
    from rlaif_jax.records import read_json

    path = os.path.join(self.checkpoint or "", ADAPTERS_FILE)
    if not os.path.isfile(path):
      raise CheckpointError(f"{self.checkpoint} holds no LoRA adapters (no {ADAPTERS_FILE}: a run without LORA_RANK)")
    record = read_json(path)
    try:
      base_source = self.replace(**record["base"])
      lora = LoraConfig(int(record["lora"]["rank"]), float(record["lora"]["alpha"]), tuple(record["lora"]["targets"]))
      trained_on = record["base_identity"]
    except (KeyError, TypeError, ValueError) as e:
      raise CheckpointError(f"{path}: not an adapters record ({e})") from e
    if base_source.identity != trained_on:
      raise CheckpointError(
        f"{self.checkpoint} holds LoRA adapters trained on {trained_on}, but that base is now {base_source.identity} "
        "(retrained, or another model): adapters are only read onto the base they were trained on"
      )
    base = base_source.load(mesh, rules)
    check_reading(self.checkpoint, encoder.reading(base.vocab))
    model = base.model.clone(scalar_head=scalar_head, lora=lora)
    # the adapters and (for a reward model) the head from the checkpoint, beside the base's arrays
    trained = LoadedModel(model, base.params, base.vocab).with_trained(self.checkpoint, mesh, rules, self.step)
    return LoadedModel(model, trained, base.vocab), lora
