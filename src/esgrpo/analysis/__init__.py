"""Analyses of checkpoints and run records (geometry of the updates)."""
