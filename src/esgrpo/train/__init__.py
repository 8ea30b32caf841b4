"""Trainers: ES (es.py) and GRPO (grpo.py), with shared budget accounting and checkpoints."""
