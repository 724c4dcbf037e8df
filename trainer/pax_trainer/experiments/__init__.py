"""Built-in experiments: importing this package registers them (`main` imports it; the registry does not)."""

from pax_trainer.experiments import lm_1b, lm_tiny, reverse_digits

__all__ = ["lm_1b", "lm_tiny", "reverse_digits"]
