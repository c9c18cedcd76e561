"""rlaif_jax: reinforcement learning from AI feedback in JAX and Flax."""

__version__ = "0.1.0"
