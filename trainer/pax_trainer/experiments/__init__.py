"""Built-in experiments (importing this package registers them)."""

from pax_trainer.experiments import lm_tiny, reverse

__all__ = ["lm_tiny", "reverse"]
