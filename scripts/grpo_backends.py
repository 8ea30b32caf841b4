"""GRPO through our loop and through TRL, side by side, with one study config: test accuracy, learning
curves and seconds per step, measured in one command (the runs interleaved: native, TRL per task).

    .venv/bin/python scripts/grpo_backends.py [--config configs/study-default.yaml] [--tasks boolq math]
                                              [--out runs/grpo-backends] [KEY=VALUE ...]

Writes <out>/<task>-<backend>/ (ordinary run directories, reused when finished), <out>/curves.png and
<out>/report.md, and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

from esgrpo.config import StudyConfig, load_config, parse_overrides
from esgrpo.run import run_training


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/study-default.yaml", help="A study config (its grpo section).")
    p.add_argument("--tasks", nargs="+", default=["boolq", "math"])
    p.add_argument("--out", default="runs/grpo-backends")
    p.add_argument("overrides", nargs="*", help="Config overrides, e.g. grpo.steps=10.")
    a = p.parse_args()
    cfg = load_config(StudyConfig, a.config, parse_overrides(a.overrides))
    out = Path(a.out)
    rows, curves = [], {}
    for task in a.tasks:
        for backend in ("native", "trl"):
            train_cfg = cfg.train_config(task)
            train_cfg = dataclasses.replace(train_cfg, grpo=dataclasses.replace(cfg.grpo, backend=backend))
            res = run_training("grpo", train_cfg, out / f"{task}-{backend}")
            metrics = [json.loads(line) for line in (Path(res["run"]) / "metrics.jsonl").read_text().splitlines()]
            metrics = [m for m in metrics if m.get("trainer") == "grpo"]
            curves[(task, backend)] = [m["reward_mean"] for m in metrics]
            t = res["train"]
            rows.append({"task": task, "backend": backend, "accuracy": 100 * res["eval"]["final"][task]["accuracy"],
                         "steps": t["steps"], "s_per_step": statistics.median(m["step_seconds"] for m in metrics[1:]),
                         "train_s": t["seconds"], "tokens": t["tokens"],
                         "peak_added_mib": t["peak_memory_added_bytes"] / 2 ** 20,
                         "final_reward": t["final_reward"]})
    lines = ["| task | backend | test accuracy % | steps | median s/step | training s | generated tokens | "
             "peak added MiB | last-step reward |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['backend']} | {r['accuracy']:.1f} | {r['steps']} | {r['s_per_step']:.2f} | "
                     f"{r['train_s']:.0f} | {r['tokens']:,} | {r['peak_added_mib']:.0f} | {r['final_reward']:.3f} |")
    for task in a.tasks:
        nat, trl = (next(r for r in rows if r["task"] == task and r["backend"] == b) for b in ("native", "trl"))
        lines.append(f"\n{task}: TRL / native seconds per step {trl['s_per_step'] / nat['s_per_step']:.2f}x")
    _plot(curves, a.tasks, out / "curves.png")
    text = "\n".join(lines)
    (out / "report.md").write_text(f"# GRPO: native vs TRL ({a.config})\n\n{text}\n\n![curves](curves.png)\n")
    print(text)


def _plot(curves: dict, tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for backend, style in (("native", "-"), ("trl", "--")):
            ys = curves[(task, backend)]
            ax.plot(range(1, len(ys) + 1), ys, style, label=backend)
        ax.set(title=f"{task}: mean reward of the step's samples", xlabel="step", ylabel="reward")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
