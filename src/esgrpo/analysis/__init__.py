"""Analyses of what post-training did to a model, read from its checkpoints."""
