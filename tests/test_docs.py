"""The README documents every metric the trainers log (name, meaning, unit), as CleanRL documents PPO's."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import StubTask, make_micro_policy
from esgrpo.config import ESConfig, GRPOConfig
from esgrpo.runs import RunDir
from esgrpo.tasks.base import Example
from esgrpo.train.es import train_es
from esgrpo.train.grpo import train_grpo

README = Path(__file__).parents[1] / "README.md"


class EveryOtherTask(StubTask):
    name = "doc"

    def reward(self, text: str, example: Example) -> float:
        return float(len(text) % 2)


EXAMPLES = [Example(uid=str(i), question=f"Compute {i}+{i}.", target={}) for i in range(4)]


def _documented() -> set[str]:
    text = README.read_text()
    section = text[text.index("### Logged metrics"):text.index("## Tasks")]
    return set(re.findall(r"`([a-z_]+)`", section))


def test_every_logged_metric_is_documented_in_the_readme(tmp_path):
    es_run, grpo_run = RunDir(tmp_path / "es"), RunDir(tmp_path / "grpo")
    train_es(make_micro_policy(), EveryOtherTask(), EXAMPLES,
             ESConfig(population=2, sigma=0.05, alpha=0.01, iterations=1, max_new_tokens=4, kl_every=1,
                      checkpoint_every=0), es_run)
    train_grpo(make_micro_policy(), EveryOtherTask(), EXAMPLES,
               GRPOConfig(steps=1, prompts_per_step=2, group_size=2, max_new_tokens=4, kl_every=1,
                          checkpoint_every=0), grpo_run)
    logged = (set(es_run.metrics()[0]) | set(es_run.metrics("updates.jsonl")[0]) | set(grpo_run.metrics()[0])
              | set(es_run.read_results()) | set(grpo_run.read_results()))
    internal = {"config", "final_checkpoint", "checkpoint", "updates", "parameters", "final_fitness", "final_reward",
                "planned_steps", "trainer"}
    missing = sorted(logged - internal - _documented())
    assert not missing, f"logged but not in the README's metrics table: {missing}"
    assert {"kl", "t_measure", "peak_memory_added_bytes"} <= logged  # the check saw the optional columns
