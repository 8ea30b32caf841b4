"""The study: the main job. Base evaluation, then per task ES (short and long) and GRPO, then tables.

Per task, one ES run of `es_long_factor x es.iterations` iterations is trained; its checkpoint at
`es.iterations` *is* the ES-short model (all randomness derives from (seed, iteration), so a
shorter run would produce exactly those weights), which saves a quarter of the ES compute.
GRPO is trained on its own budget (`budget_mode: paper`) or on exactly the ES-short rollouts
(`budget_mode: matched`). Every run lives in its own directory under `out/runs/` and is reused or
resumed when the study is started again, so an interrupted study loses at most one checkpoint
interval of work.

Then, unless disabled, the geometry analyses and theory checks (`analysis.json`, analysis/study.py)
and the sequential study (`out/sequence/`, sequence.py). Writes `out/report.html` and its Markdown
twin `out/report.md` (Table 1 layout, budgets, geometry, theory, sequential), `out/results.json` and
the PNGs in `out/figures/`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from esgrpo.analysis.study import AnalysisConfig
from esgrpo.config import (
    NON_NEGATIVE,
    POSITIVE,
    DataConfig,
    EvalConfig,
    F,
    TinyModelConfig,
    dump_yaml,
    sub,
)
from esgrpo.evaluate import evaluate
from esgrpo.models import load_policy, model_identity, resolve_model_path
from esgrpo.runs import RunDir, default_run_path, read_jsonl, write_text
from esgrpo.sequence import SequentialSettings
from esgrpo.tasks import examples_hash, load_examples
from esgrpo.tasks.base import Example
from esgrpo.train.launch import SetupConfig, TrainConfig, run_training

METHODS = ("es_short", "es_long", "grpo")


@dataclass
class StudyConfig(SetupConfig):
    """`esgrpo study`: base eval, then ES short / ES long / GRPO on every task, and the tables."""

    es_long_factor: int = F(3, "ES long runs this many times es.iterations (the paper: 300 vs 100).", POSITIVE)
    budget_mode: Literal["paper", "matched"] = F(
        "paper", "paper: each method on its own configured budget (ES iterations vs GRPO steps, as the "
        "paper); matched: GRPO gets exactly the rollouts of ES short.")
    train: bool = F(True, "Train (false: only the base evaluation).")
    extra_models: list[str] = F(["smollm2-135m"], "Further models whose base accuracy is reported "
                                "(evaluated on extra_n_test examples per task).")
    extra_n_test: int = F(50, "Test examples per task for the extra models.", NON_NEGATIVE)
    extra_max_new_tokens: int = F(160, "max_new_tokens for the extra models (they reason in prose).", POSITIVE)
    out: str = F("runs/study", "Study directory (report.html, report.md, results.json, analysis.json, figures/, "
                 "runs/).")
    analysis: AnalysisConfig = sub(AnalysisConfig)
    sequential: SequentialSettings = sub(SequentialSettings)

    def quick(self) -> StudyConfig:
        """The --quick variant (a smoke run, ~5 min on 2 cores): small budgets, test sets and analysis grids, no
        extra models, a two-stage sequence without ES long."""
        return dataclasses.replace(
            self, data=dataclasses.replace(self.data, n_test=100),
            es=dataclasses.replace(self.es, iterations=max(1, self.es.iterations // 4),
                                   batch_size=max(8, self.es.batch_size // 2) if self.es.batch_size else 32),
            grpo=dataclasses.replace(self.grpo, steps=max(1, self.grpo.steps // 4)),
            es_long_factor=2, extra_models=[], out=self.out.rstrip("/") + "-quick",
            analysis=dataclasses.replace(self.analysis, n_examples=20, alphas=3, probe_points=2, probe_n_examples=10,
                                         kl_prompts=8, kl_samples=1, heldout_docs=100),
            sequential=dataclasses.replace(self.sequential, order=self.sequential.order[:2],
                                           methods=[m for m in self.sequential.methods if m != "es_long"] or ["grpo"],
                                           kl_prompts=8, heldout_docs=100))


def load_task_examples(data: DataConfig, split: str, n: int) -> dict[str, list[Example]]:
    """Examples per task from the configured source."""
    return {t: load_examples(t, data.source, split, n, seed=data.seed, path=data.data_paths.get(t))
            for t in data.tasks}


def run_eval(cfg: EvalConfig, run_path: str | Path | None = None,
             tiny: TinyModelConfig | None = None) -> dict[str, Any]:
    """`esgrpo eval`: one model, all configured tasks; returns results (also in results.json)."""
    n = cfg.data.n_test if cfg.split == "test" else cfg.data.n_train
    examples = load_task_examples(cfg.data, cfg.split, n)  # data errors surface before model loading
    inputs = {"model": model_identity(cfg.model, tiny),
              "data": examples_hash([ex for exs in examples.values() for ex in exs])}
    run = RunDir(run_path or cfg.out or default_run_path("eval", cfg.model.name), cfg, command="eval", inputs=inputs)
    policy = load_policy(cfg.model, tiny)
    t0 = time.time()
    res = evaluate(policy, examples, cfg.generation, run=run, n_show=cfg.n_show)
    out = {"model": cfg.model.name, "split": cfg.split, "source": cfg.data.source,
           "parameters": policy.num_parameters(), "tasks": res, "seconds": time.time() - t0}
    run.write_results(out)
    print(format_accuracy_table({cfg.model.name: res}))
    print(f"[eval] results in {run.path}", file=sys.stderr)
    return out


def run_eval_cached(cfg: EvalConfig, path: Path, tiny: TinyModelConfig | None = None) -> dict[str, Any]:
    """Reuse a finished evaluation in `path` if its config is the same, else run it."""
    done = RunDir(path).read_results()
    if done is not None:
        n = cfg.data.n_test if cfg.split == "test" else cfg.data.n_train
        examples = load_task_examples(cfg.data, cfg.split, n)
        RunDir(path, cfg, inputs={"model": model_identity(cfg.model, tiny),
                                   "data": examples_hash([ex for exs in examples.values() for ex in exs])})
        print(f"[study] reusing finished evaluation {path}", file=sys.stderr)
        return done
    return run_eval(cfg, run_path=path, tiny=tiny)


def format_accuracy_table(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown table: one row per model, one column per task (accuracy %, n)."""
    tasks = list(next(iter(rows.values())).keys()) if rows else []
    lines = ["| model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name, res in rows.items():
        cells = [f"{100 * res[t]['accuracy']:.1f} (n={res[t]['n']})" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------


def _train_config(cfg: StudyConfig, task: str) -> TrainConfig:
    return TrainConfig(model=cfg.model, tiny=cfg.tiny, data=cfg.data, generation=cfg.generation,
                       es=cfg.es, grpo=cfg.grpo, task=task)


def _budget_at(run_dir: Path, iteration: int) -> dict[str, Any]:
    """Rollouts/tokens/seconds of an ES run after `iteration` (from its metrics)."""
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        if row.get("iteration") == iteration:
            return {"iterations": iteration, "rollouts": row["rollouts"], "tokens": row["tokens"],
                    "seconds": row["seconds"]}
    raise RuntimeError(f"{run_dir}: no metrics row for iteration {iteration}")


def train_task(cfg: StudyConfig, task: str, root: Path) -> dict[str, Any]:
    """ES long (with ES short as its checkpoint) and GRPO on one task; accuracies and budgets."""
    short = cfg.es.iterations
    es_cfg = dataclasses.replace(cfg.es, iterations=short * cfg.es_long_factor, checkpoint_every=short,
                                 max_rollouts=0)
    tc = dataclasses.replace(_train_config(cfg, task), es=es_cfg)
    es = run_training("es", tc, root / "runs" / f"{task}-es", extra_checkpoints={"es_short": short})
    es_dir = Path(es["run"])
    budgets = {"es_short": _budget_at(es_dir, short),
               "es_long": {k: es["train"][k] for k in ("iterations", "rollouts", "tokens", "seconds")}}
    grpo_cfg = cfg.grpo
    if cfg.budget_mode == "matched":
        grpo_cfg = dataclasses.replace(grpo_cfg, steps=0, max_rollouts=budgets["es_short"]["rollouts"])
    gr = run_training("grpo", dataclasses.replace(_train_config(cfg, task), grpo=grpo_cfg),
                      root / "runs" / f"{task}-grpo")
    budgets["grpo"] = {"steps": gr["train"]["steps"], **{k: gr["train"][k] for k in ("rollouts", "tokens", "seconds")}}
    for m, src in (("es_short", es), ("es_long", es), ("grpo", gr)):
        budgets[m]["peak_memory_added_bytes"] = src["train"].get("peak_memory_added_bytes")
        budgets[m]["model_bytes"] = src["train"].get("model_bytes")
    acc = {"es_short": es["eval"]["es_short"][task]["accuracy"], "es_long": es["eval"]["final"][task]["accuracy"],
           "grpo": gr["eval"]["final"][task]["accuracy"]}
    return {"accuracy": acc, "budgets": budgets, "runs": {"es": es["run"], "grpo": gr["run"]}}


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Base eval + training on every task + tables and figures; resumable."""
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    write_text(root / "config.yaml", dump_yaml(cfg))
    t0 = time.time()
    resolve_model_path(cfg.model, cfg.tiny)
    t_build = time.time() - t0
    ecfg = EvalConfig(model=cfg.model, data=cfg.data, generation=cfg.generation)
    base = run_eval_cached(ecfg, root / "runs" / f"base-{cfg.model.name}", cfg.tiny)
    results: dict[str, Any] = {"model": cfg.model.name, "parameters": base["parameters"],
                               "budget_mode": cfg.budget_mode, "build_seconds": t_build,
                               "base": {t: r["accuracy"] for t, r in base["tasks"].items()},
                               "n_test": {t: r["n"] for t, r in base["tasks"].items()}, "tasks": {}}
    if cfg.train:
        for i, task in enumerate(cfg.data.tasks):
            print(f"[study] task {i + 1}/{len(cfg.data.tasks)}: {task} ({time.time() - t0:.0f}s elapsed)",
                  file=sys.stderr, flush=True)
            results["tasks"][task] = train_task(cfg, task, root)
            RunDir(root).write_results(results)  # incremental: a crash keeps the finished tasks
    extra = {}
    for name in cfg.extra_models:
        if cfg.extra_n_test == 0:
            break
        e = EvalConfig(model=dataclasses.replace(cfg.model, name=name),
                       data=dataclasses.replace(cfg.data, n_test=cfg.extra_n_test),
                       generation=dataclasses.replace(cfg.generation, max_new_tokens=cfg.extra_max_new_tokens,
                                                      batch_size=min(cfg.generation.batch_size, 16)))
        r = run_eval_cached(e, root / "runs" / f"base-{name}")
        extra[name] = {"parameters": r["parameters"], "n": cfg.extra_n_test,
                       "accuracy": {t: v["accuracy"] for t, v in r["tasks"].items()},
                       "truncated": {t: v["truncated_fraction"] for t, v in r["tasks"].items()}}
    results["extra_models"] = extra
    RunDir(root).write_results(results)
    if cfg.train and cfg.analysis.enabled:
        from esgrpo.analysis.study import analyze_study

        analyze_study(root, cfg, results)
    if cfg.train and cfg.sequential.enabled and len(cfg.data.tasks) > 1:
        from esgrpo.sequence import SequenceConfig, run_sequence

        order = [t for t in cfg.sequential.order if t in cfg.data.tasks]  # the study's tasks only
        seq = SequenceConfig(model=cfg.model, tiny=cfg.tiny, data=cfg.data, generation=cfg.generation, es=cfg.es,
                             grpo=cfg.grpo, sequential=dataclasses.replace(cfg.sequential, order=order),
                             es_long_factor=cfg.es_long_factor, reuse=str(root), out=str(root / "sequence"))
        run_sequence(seq)
    results["seconds"] = time.time() - t0
    RunDir(root).write_results(results)
    from esgrpo.report.study import write_study_report

    md = write_study_report(root, results, cfg)
    print(md)
    return results
