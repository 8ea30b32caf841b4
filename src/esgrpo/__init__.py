"""esgrpo: Evolution Strategies vs GRPO post-training of causal LMs, and the geometry of their updates."""

__version__ = "0.1.0"
