"""The difficulty levels of the synthetic tasks (data.difficulty): what each level changes, a sample instance,
and, with --capacity, how many distinct instances each level's splits hold.

    .venv/bin/python scripts/difficulty_levels.py                      # the level table (Markdown) and samples
    .venv/bin/python scripts/difficulty_levels.py --capacity 300000    # distinct keys per split in 300k draws

--capacity draws that many candidates from random.Random(0) per task and level and counts the distinct instances
that fall in each split: a lower bound of the pool (the `capacity` of each level in tasks/<task>.py, beyond which
an n is refused before drawing). Level 1's capacities were measured by drawing until the pool ran dry.
"""

from __future__ import annotations

import argparse
import random
import time

from esgrpo.config.schema import DIFFICULTY_LEVELS, TASK_NAMES
from esgrpo.tasks import get_task
from esgrpo.tasks.boolq import _draw as boolq_draw
from esgrpo.tasks.chemistry import _draw as chemistry_draw
from esgrpo.tasks.countdown import _draw as countdown_draw
from esgrpo.tasks.hub import SYNTHETIC_SPLITS, split_of
from esgrpo.tasks.math import _draw as math_draw

DRAWS = {"countdown": countdown_draw, "math": math_draw, "chemistry": chemistry_draw, "boolq": boolq_draw}


def capacity(task: str, level: int, draws: int) -> dict[str, int]:
    """Distinct instances per split among `draws` candidates of seed 0 (split by the task's key hash)."""
    spec = get_task(task).levels[level]
    rng = random.Random(0)
    keys = {DRAWS[task](rng, spec)[0] for _ in range(draws)}
    counts = dict.fromkeys(SYNTHETIC_SPLITS, 0)
    for key in keys:
        counts[split_of(task, key)] += 1
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--capacity", type=int, default=0, help="measure pool sizes with this many draws per level")
    p.add_argument("--levels", default=",".join(map(str, DIFFICULTY_LEVELS[1:])), help="levels for --capacity")
    a = p.parse_args()
    if a.capacity:
        for task in TASK_NAMES:
            for level in map(int, a.levels.split(",")):
                t0 = time.time()
                counts = capacity(task, level, a.capacity)
                print(f"{task} level {level}: {counts} ({time.time() - t0:.0f} s)", flush=True)
        return
    print("| task | level | what changes | sample question |")
    print("|---|---|---|---|")
    for task in TASK_NAMES:
        t = get_task(task)
        for level, spec in t.levels.items():
            sample = t.synthetic("test", 1, 0, level)[0].question.replace("\n", " / ")
            print(f"| {task} | {level} | {spec.what} | {sample} |")


if __name__ == "__main__":
    main()
