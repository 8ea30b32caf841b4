"""Studies: the main job. Builds the models, evaluates them on every task, writes the results.

`run_eval` backs `esgrpo eval`; `run_study` backs `esgrpo study` (the README's first command).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esgrpo.config import (
    NON_NEGATIVE,
    POSITIVE,
    DataConfig,
    EvalConfig,
    F,
    GenerationConfig,
    ModelConfig,
    TinyModelConfig,
    dump_yaml,
    sub,
)
from esgrpo.evaluate import evaluate
from esgrpo.models import load_policy
from esgrpo.runs import RunDir, default_run_path, write_text
from esgrpo.tasks import load_examples
from esgrpo.tasks.base import Example


@dataclass
class StudyConfig:
    """`esgrpo study`: the default study on the tiny model (and base evaluations of extra models)."""

    model: ModelConfig = sub(ModelConfig)
    tiny: TinyModelConfig = sub(TinyModelConfig)
    data: DataConfig = sub(DataConfig)
    generation: GenerationConfig = sub(GenerationConfig)
    extra_models: list[str] = F(["smollm2-135m"], "Further models whose base accuracy is reported "
                                "(evaluated on extra_n_test examples per task).")
    extra_n_test: int = F(50, "Test examples per task for the extra models.", NON_NEGATIVE)
    extra_max_new_tokens: int = F(160, "max_new_tokens for the extra models (they reason in prose).", POSITIVE)
    out: str = F("runs/study", "Study directory (results.md, results.json, per-run subdirectories).")

    def quick(self) -> StudyConfig:
        """The --quick variant: fewer test examples, no extra models."""
        return dataclasses.replace(self, data=dataclasses.replace(self.data, n_test=60), extra_models=[],
                                   out=self.out.rstrip("/") + "-quick")


def load_task_examples(data: DataConfig, split: str, n: int) -> dict[str, list[Example]]:
    """Examples per task from the configured source."""
    return {t: load_examples(t, data.source, split, n, seed=data.seed, path=data.data_paths.get(t))
            for t in data.tasks}


def run_eval(cfg: EvalConfig, run_path: str | Path | None = None,
             tiny: TinyModelConfig | None = None) -> dict[str, Any]:
    """`esgrpo eval`: one model, all configured tasks; returns results (also in results.json)."""
    n = cfg.data.n_test if cfg.split == "test" else cfg.data.n_train
    examples = load_task_examples(cfg.data, cfg.split, n)  # data errors surface before model loading
    run = RunDir(run_path or cfg.out or default_run_path("eval", cfg.model.name), cfg, command="eval")
    policy = load_policy(cfg.model, tiny)
    t0 = time.time()
    res = evaluate(policy, examples, cfg.generation, run=run, n_show=cfg.n_show)
    out = {"model": cfg.model.name, "split": cfg.split, "source": cfg.data.source,
           "parameters": policy.num_parameters(), "tasks": res, "seconds": time.time() - t0}
    run.write_results(out)
    print(format_accuracy_table({cfg.model.name: res}))
    print(f"[eval] results in {run.path}", file=sys.stderr)
    return out


def format_accuracy_table(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown table: one row per model, one column per task (accuracy %, n)."""
    tasks = list(next(iter(rows.values())).keys()) if rows else []
    lines = ["| model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name, res in rows.items():
        cells = [f"{100 * res[t]['accuracy']:.1f} (n={res[t]['n']})" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Build the models and evaluate them on every task (base accuracies)."""
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    table: dict[str, dict[str, dict[str, Any]]] = {}
    meta: dict[str, Any] = {}
    ecfg = EvalConfig(model=cfg.model, data=cfg.data, generation=cfg.generation)
    res = run_eval_cached(ecfg, root / f"eval-base-{cfg.model.name}", cfg.tiny)
    table[cfg.model.name] = res["tasks"]
    meta[cfg.model.name] = {"parameters": res["parameters"], "seconds": res["seconds"]}
    for name in cfg.extra_models:
        if cfg.extra_n_test == 0:
            break
        e = EvalConfig(model=dataclasses.replace(cfg.model, name=name),
                       data=dataclasses.replace(cfg.data, n_test=cfg.extra_n_test),
                       generation=dataclasses.replace(cfg.generation, max_new_tokens=cfg.extra_max_new_tokens,
                                                      batch_size=min(cfg.generation.batch_size, 16)))
        res = run_eval_cached(e, root / f"eval-base-{name}")
        table[name] = res["tasks"]
        meta[name] = {"parameters": res["parameters"], "seconds": res["seconds"]}
    md = ["# esgrpo study: base accuracy (greedy, test split)", "",
          f"Source: {cfg.data.source}; tiny model test n = {cfg.data.n_test}, extra models n = "
          f"{cfg.extra_n_test}.", "", format_accuracy_table(table), "",
          "| model | parameters | eval seconds |", "|---|---|---|"]
    md += [f"| {k} | {v['parameters']:,} | {v['seconds']:.0f} |" for k, v in meta.items()]
    md += ["", f"Total study time: {time.time() - t0:.0f} s."]
    write_text(root / "results.md", "\n".join(md) + "\n")
    RunDir(root).write_results({"base": table, "models": meta, "seconds": time.time() - t0})
    print("\n".join(md))
    return {"base": table, "models": meta}


def run_eval_cached(cfg: EvalConfig, path: Path, tiny: TinyModelConfig | None = None) -> dict[str, Any]:
    """Reuse a finished evaluation in `path` (resume), else run it."""
    same_config = (path / "config.yaml").exists() and (path / "config.yaml").read_text() == dump_yaml(cfg)
    done = RunDir(path).read_results() if same_config else None
    if done is not None:
        print(f"[study] reusing finished evaluation {path}", file=sys.stderr)
        return done
    return run_eval(cfg, run_path=path, tiny=tiny)
