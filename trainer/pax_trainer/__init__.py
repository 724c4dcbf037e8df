"""Pax trainer: Pax-style experiments trained with JAX/Flax NNX, Orbax checkpoints and Grain data."""
