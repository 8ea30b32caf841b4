"""Binary correctness rewards (1.0 / 0.0) for the four tasks; pure, bounded, never raising."""

from esgrpo.rewards.boolq import boolq_reward
from esgrpo.rewards.countdown import countdown_reward
from esgrpo.rewards.extract import last_boxed
from esgrpo.rewards.math import math_reward
from esgrpo.rewards.mcq import mcq_reward

__all__ = ["boolq_reward", "countdown_reward", "last_boxed", "math_reward", "mcq_reward"]
