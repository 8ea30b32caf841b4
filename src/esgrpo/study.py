"""The study: the main job. Base evaluation, then per task ES (short and long) and GRPO, then tables.

Per task, one ES run of `es_long_factor x es.iterations` iterations is trained; its checkpoint at
`es.iterations` *is* the ES-short model (all randomness derives from (seed, iteration), so a
shorter run would produce exactly those weights), which saves a quarter of the ES compute.
GRPO is trained on its own budget (`budget_mode: paper`) or on exactly the ES-short rollouts
(`budget_mode: matched`). Every run lives in its own directory under `out/runs/` and is reused or
resumed when the study is started again, so an interrupted study loses at most one checkpoint
interval of work.

`run_study`, step by step:
    1. check everything that can be checked (the study directory's identity, the data) before
       anything is written;
    2. the base model's greedy test accuracy;
    3. per task: ES (short and long), GRPO and the ES variants (`es_variants`), each trained and evaluated;
    4. further models' base accuracy (`extra_models`);
    5. the geometry analyses and theory checks (`analysis.json`, analysis/study.py);
    6. the sequential study (`out/sequence/`, sequence.py);
    7. the report: `out/report.html`, its Markdown twin `out/report.md`, `out/results.json`, figures.
`esgrpo study --only TASK:METHOD` runs single cells of Table 1 (steps 1 and 2-3 for those cells).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from esgrpo.config import EvalConfig, SequenceConfig, StudyConfig, validate
from esgrpo.errors import ConfigError
from esgrpo.models import model_identity
from esgrpo.parallel import Job, run_jobs
from esgrpo.run import run_eval, run_training
from esgrpo.runs import JsonRecord, RunDir, read_jsonl
from esgrpo.tasks import examples_hash, load_task_examples

CELL_METHODS = ("base", "es", "grpo")  # --only TASK:METHOD; "es" trains ES short and ES long together


def _say(msg: str) -> None:
    print(f"[study] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# One task's runs


def _budget_at(run_dir: Path, iteration: int) -> dict[str, Any]:
    """Rollouts/tokens/seconds of an ES run after `iteration` (from its metrics)."""
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        if row.get("iteration") == iteration:
            return {"iterations": iteration, "rollouts": row["rollouts"], "tokens": row["tokens"],
                    "seconds": row["seconds"]}
    raise RuntimeError(f"{run_dir}: no metrics row for iteration {iteration}")


_COST_KEYS = ("peak_memory_bytes", "peak_memory_added_bytes", "memory_kind", "model_bytes", "measure_seconds",
              "measure_memory_bytes")


def train_es_cells(cfg: StudyConfig, task: str, root: Path) -> dict[str, Any]:
    """ES long on `task`, its checkpoint at es.iterations being ES short; accuracies and budgets."""
    short = cfg.es.iterations
    # ES short's checkpoint is pinned (written, never pruned); es.checkpoint_every stays the user's resume interval
    es_cfg = dataclasses.replace(cfg.es, iterations=short * cfg.es_long_factor, checkpoint_pin=[short], max_rollouts=0)
    tc = dataclasses.replace(cfg.train_config(task), es=es_cfg)
    es = run_training("es", tc, root / "runs" / f"{task}-es", extra_checkpoints={"es_short": short}, extend=True)
    long_budget = {k: es["train"][k] for k in ("iterations", "rollouts", "tokens", "seconds")}
    costs = {k: es["train"].get(k) for k in _COST_KEYS}
    return {"accuracy": {"es_short": es["eval"]["es_short"][task]["accuracy"],
                         "es_long": es["eval"]["final"][task]["accuracy"]},
            "right_format": {"es_short": es["eval"]["es_short"][task].get("right_format"),
                             "es_long": es["eval"]["final"][task].get("right_format")},
            "accuracy_right_format": {"es_short": es["eval"]["es_short"][task].get("accuracy_right_format"),
                                      "es_long": es["eval"]["final"][task].get("accuracy_right_format")},
            "budgets": {"es_short": {**_budget_at(Path(es["run"]), short), **costs},
                        "es_long": {**long_budget, **costs}},
            "runs": {"es": es["run"]}}


def train_variant_cell(cfg: StudyConfig, task: str, root: Path, name: str) -> dict[str, Any]:
    """The ES variant arm `name` on `task`: one ES run with the variant's es settings (es_variants)."""
    tc = dataclasses.replace(cfg.train_config(task), es=dataclasses.replace(cfg.variant_es(name), max_rollouts=0))
    r = run_training("es", tc, root / "runs" / f"{task}-es-{name}")
    ev = r["eval"]["final"][task]
    return {"accuracy": {name: ev["accuracy"]}, "right_format": {name: ev.get("right_format")},
            "accuracy_right_format": {name: ev.get("accuracy_right_format")},
            "budgets": {name: {**{k: r["train"][k] for k in ("iterations", "rollouts", "tokens", "seconds")},
                               **{k: r["train"].get(k) for k in _COST_KEYS}}},
            "runs": {name: r["run"]}}


def train_grpo_cell(cfg: StudyConfig, task: str, root: Path, es_short_rollouts: int | None = None,
                    deps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """GRPO on `task` (budget_mode matched: exactly ES short's rollouts, given or from the ES job in `deps`)."""
    if deps:
        es_short_rollouts = deps[0]["budgets"]["es_short"]["rollouts"]
    grpo_cfg = cfg.grpo
    if cfg.budget_mode == "matched":
        if es_short_rollouts is None:
            raise ConfigError("budget_mode matched: GRPO's budget is ES short's rollouts, so ES must run first "
                              f"(--only {task}:es,{task}:grpo)")
        grpo_cfg = dataclasses.replace(grpo_cfg, steps=0, max_rollouts=es_short_rollouts)
    gr = run_training("grpo", dataclasses.replace(cfg.train_config(task), grpo=grpo_cfg),
                      root / "runs" / f"{task}-grpo")
    budget = {"steps": gr["train"]["steps"], **{k: gr["train"][k] for k in ("rollouts", "tokens", "seconds")},
              **{k: gr["train"].get(k) for k in _COST_KEYS}}
    return {"accuracy": {"grpo": gr["eval"]["final"][task]["accuracy"]}, "budgets": {"grpo": budget},
            "right_format": {"grpo": gr["eval"]["final"][task].get("right_format")},
            "accuracy_right_format": {"grpo": gr["eval"]["final"][task].get("accuracy_right_format")},
            "runs": {"grpo": gr["run"]}}


# ----------------------------------------------------------------------------------------------
# The study


def parse_only(only: list[str], tasks: list[str], variants: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """['math:grpo', 'boolq:es'] -> {'math': ('grpo',), 'boolq': ('es',)}; es_short/es_long mean es; a variant
    arm (es_variants) is a method of its own."""
    cells: dict[str, list[str]] = {}
    methods = (*CELL_METHODS, *variants)
    for item in only:
        task, _, method = item.partition(":")
        method = {"es_short": "es", "es_long": "es"}.get(method, method)
        if task not in tasks or method not in methods:
            raise ConfigError(f"--only {item!r}: expected TASK:METHOD with TASK among {', '.join(tasks)} and METHOD "
                              f"among {', '.join(methods)} (es trains ES short and ES long together)")
        cells.setdefault(task, [])
        if method not in cells[task]:
            cells[task].append(method)
    return {t: tuple(m) for t, m in cells.items()}


def _base_eval(cfg: StudyConfig, root: Path) -> dict[str, Any]:
    ecfg = EvalConfig(model=cfg.model, data=cfg.data, prompt=cfg.prompt, generation=cfg.generation)
    return run_eval(ecfg, run_path=root / "runs" / f"base-{cfg.model.name}", tiny=cfg.tiny, reuse=True)


def _extra_model(cfg: StudyConfig, root: Path, name: str) -> dict[str, Any]:
    """A further model's base accuracy on extra_n_test examples per task."""
    e = EvalConfig(model=dataclasses.replace(cfg.model, name=name), prompt=cfg.extra_prompt,
                   data=dataclasses.replace(cfg.data, n_test=cfg.extra_n_test),
                   generation=dataclasses.replace(cfg.generation, max_new_tokens=cfg.extra_max_new_tokens,
                                                  batch_size=min(cfg.generation.batch_size, 16)))
    r = run_eval(e, run_path=root / "runs" / f"base-{name}", reuse=True)
    return {"parameters": r["parameters"], "n": cfg.extra_n_test,
            "accuracy": {t: v["accuracy"] for t, v in r["tasks"].items()},
            "right_format": {t: v.get("right_format") for t, v in r["tasks"].items()},
            "constant_baseline": {t: v.get("constant_baseline") for t, v in r["tasks"].items()},
            "truncated": {t: v["truncated_fraction"] for t, v in r["tasks"].items()}}


def study_jobs(cfg: StudyConfig, root: Path, cells: dict[str, tuple[str, ...]], results: dict[str, Any],
               extra: bool) -> list[tuple[Job, Callable[[Any], None]]]:
    """The study's independent runs as jobs, each with the function that merges its result into `results`:
    ES runs first (the longest), then GRPO (after its task's ES when budget_mode is matched), the base
    evaluation and the further models."""
    jobs: list[tuple[Job, Callable[[Any], None]]] = []

    def merge_task(task: str) -> Callable[[dict[str, Any]], None]:
        def merge(part: dict[str, Any]) -> None:
            t = results["tasks"].setdefault(task, {})
            for k in ("accuracy", "budgets", "runs", "right_format", "accuracy_right_format"):
                t[k] = {**t.get(k, {}), **part.get(k, {})}
        return merge

    es_job: dict[str, int] = {}
    for task, methods in cells.items():
        if cfg.train and "es" in methods:
            es_job[task] = len(jobs)
            jobs.append((Job(f"{task} es", train_es_cells, (cfg, task, root)), merge_task(task)))
    for task, methods in cells.items():
        for name in cfg.es_variants if cfg.train else ():
            if name in methods:
                jobs.append((Job(f"{task} {name}", train_variant_cell, (cfg, task, root, name)), merge_task(task)))
    for task, methods in cells.items():
        if cfg.train and "grpo" in methods:
            after = (es_job[task],) if cfg.budget_mode == "matched" and task in es_job else ()
            known = results["tasks"].get(task, {}).get("budgets", {}).get("es_short", {}).get("rollouts")
            jobs.append((Job(f"{task} grpo", train_grpo_cell, (cfg, task, root, known), after=after), merge_task(task)))
    if any("base" in m for m in cells.values()):
        def merge_base(base: dict[str, Any]) -> None:
            results.update({"model": cfg.model.name, "parameters": base["parameters"], "budget_mode": cfg.budget_mode,
                            "base": {t: r["accuracy"] for t, r in base["tasks"].items()},
                            "base_right_format": {t: r.get("right_format") for t, r in base["tasks"].items()},
                            "base_accuracy_right_format": {t: r.get("accuracy_right_format")
                                                           for t, r in base["tasks"].items()},
                            "constant_baseline": {t: r.get("constant_baseline") for t, r in base["tasks"].items()},
                            "n_test": {t: r["n"] for t, r in base["tasks"].items()}})
        jobs.append((Job("base eval", _base_eval, (cfg, root)), merge_base))
    for name in cfg.extra_models if extra and cfg.extra_n_test else []:
        jobs.append((Job(f"base {name}", _extra_model, (cfg, root, name)),
                     lambda r, name=name: results.setdefault("extra_models", {}).__setitem__(name, r)))
    return jobs


def run_study(cfg: StudyConfig, only: list[str] | None = None) -> dict[str, Any]:
    """Base eval + training on every task + analyses + sequence + report; resumable. `only`: just these
    TASK:METHOD cells (no analyses, sequence or report unless every cell is then done)."""
    if cfg.seeds:
        raise ConfigError(f"seeds = {cfg.seeds}: a study over several seeds runs with esgrpo.seeds.run_seeds (the "
                          "command line `esgrpo study` picks it), one study per seed")
    # 1. Checks before anything is written: the settings (also when built in Python), the study directory's
    #    identity and the data.
    validate(cfg)
    variants = tuple(cfg.es_variants)
    cells = parse_only(only, cfg.data.tasks, variants) if only else \
        {t: (*CELL_METHODS, *variants) for t in cfg.data.tasks}
    data = [ex for split, n in (("train", cfg.data.n_train), ("test", cfg.data.n_test))
            for exs in load_task_examples(cfg.data, split, n).values() for ex in exs]
    t0 = time.time()
    inputs = {"model": model_identity(cfg.model, cfg.tiny), "data": examples_hash(data)}
    t_build = time.time() - t0
    with RunDir(cfg.out, cfg, command="study", inputs=inputs) as study:
        root = study.path
        record = JsonRecord(root / "results.json")
        results = record.data
        results.setdefault("tasks", {})

        # 2-4. The runs: per task ES (short and long) and GRPO, the base evaluation, further models; independent,
        #      so with parallel = ray they run as Ray tasks side by side. Each result lands in results.json as it
        #      finishes; a finished run's directory is reused when the study is started again.
        jobs = study_jobs(cfg, root, cells, results, extra=not only)
        results["build_seconds"] = t_build
        results.setdefault("extra_models", {})

        def done(i: int, out: Any) -> None:
            jobs[i][1](out)
            record.save()

        run_jobs([j for j, _ in jobs], cfg.ray if cfg.parallel == "ray" else None, on_done=done)
        if only:
            print(_cells_table(results, cells, cfg.arms()))
            if not _complete(results, cfg):
                return results
            _say("every cell is done; finishing the study")

        # 5. Analyses; 6. the sequence.
        if cfg.train and cfg.analysis.enabled:
            from esgrpo.analysis.study import analyze_study

            analyze_study(root, cfg, results, ray=cfg.ray if cfg.parallel == "ray" else None)
        if cfg.train and cfg.sequential.enabled and len(cfg.data.tasks) > 1:
            from esgrpo.sequence import run_sequence

            run_sequence(sequence_config(cfg))
        # Wall time summed over the invocations that worked on this study (a rerun that reuses it adds seconds).
        results["seconds"] = results.get("seconds", 0.0) + time.time() - t0
        record.save()

        # 7. The report.
        from esgrpo.report.study import write_study_report

        md = write_study_report(root, results, cfg)
    print(md)
    return results


def sequence_config(cfg: StudyConfig) -> SequenceConfig:
    """The study's sequential part: its tasks in `sequential.order`, stage 1 reused from its runs."""
    order = [t for t in cfg.sequential.order if t in cfg.data.tasks]
    return SequenceConfig(model=cfg.model, tiny=cfg.tiny, data=cfg.data, prompt=cfg.prompt, generation=cfg.generation,
                          es=cfg.es,
                          grpo=cfg.grpo, ray=cfg.ray, sequential=dataclasses.replace(cfg.sequential, order=order),
                          es_long_factor=cfg.es_long_factor, es_variants=cfg.es_variants, reuse=cfg.out,
                          out=str(Path(cfg.out) / "sequence"),
                          parallel=cfg.parallel, report_to=cfg.report_to)


def _complete(results: dict[str, Any], cfg: StudyConfig) -> bool:
    return "base" in results and (not cfg.train or all(
        set(results["tasks"].get(t, {}).get("accuracy", {})) >= set(cfg.arms())
        for t in cfg.data.tasks))


def _cells_table(results: dict[str, Any], cells: dict[str, tuple[str, ...]], arms: list[str]) -> str:
    """The asked-for cells as a Markdown table (accuracy %, '-' where not computed)."""
    cols = ("base", *arms)
    lines = ["| task | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for task in cells:
        acc = {**results["tasks"].get(task, {}).get("accuracy", {}),
               **({"base": results["base"][task]} if task in results.get("base", {}) else {})}
        lines.append(f"| {task} | " + " | ".join(f"{100 * acc[c]:.1f}" if c in acc else "-" for c in cols) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# A finished study's directory: analyses and report again


def _is_seeds_study(root: Path) -> bool:
    try:
        return bool(RunDir(root).saved_config(StudyConfig).seeds)
    except Exception:
        return False


def open_study(path: str | Path) -> tuple[StudyConfig, dict[str, Any]]:
    """The config and results of a study directory, or one clear error saying what the directory is."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise ConfigError(f"study directory {path} does not exist")
    if (run.path / "config.yaml").exists() and not (run.path / "results.json").exists() and \
            (run.path / "checkpoints").exists():
        raise ConfigError(f"{path} is a training run directory, not a study directory")
    try:
        cfg = run.saved_config(StudyConfig)
    except Exception as e:
        raise ConfigError(f"{path} is not a study directory: {e}") from None
    results = run.read_results()
    if results is None or "base" not in results:
        raise ConfigError(f"{path}/results.json is missing or incomplete: run `esgrpo study` first")
    return cfg, results


def reanalyze(path: str | Path, overrides: list[str]) -> None:
    """`esgrpo analyze study DIR [--set analysis.KEY=VALUE ...]`: every analysis, then the report. Only the
    analysis settings may be changed here; with other ones than analysis.json's, that file must be deleted
    first. The study's config.yaml then records the analysis settings its analysis.json holds."""
    from esgrpo.analysis.study import analyze_study
    from esgrpo.config import dump_yaml, from_dict, merge, parse_overrides, to_dict
    from esgrpo.runs import write_text

    cfg, results = open_study(path)
    over = parse_overrides(overrides)
    if set(over) - {"analysis"}:
        raise ConfigError(f"analyze study: only analysis.* settings can be changed here, got "
                          f"{', '.join(sorted(set(over) - {'analysis'}))}")
    new = from_dict(StudyConfig, merge(to_dict(cfg), over))
    with RunDir(path, cfg, command="analyze study") as run:
        analyze_study(run.path, new, results)
        write_text(run.path / "config.yaml", dump_yaml(new))
    write_report(path)


def write_report(path: str | Path, screenshot: bool = False) -> list[Path]:
    """`esgrpo report DIR`: report.html and report.md from the study's records (+ a Chromium screenshot)."""
    from esgrpo.report.study import write_study_report

    root = Path(path)
    if _is_seeds_study(root):
        from esgrpo.analysis.seeds import refresh
        from esgrpo.report.seeds import write_seeds_report

        refresh(root)  # the statistics and findings from the records, then the report
        write_seeds_report(root)
        return [root / "report.html"]
    cfg, results = open_study(path)
    write_study_report(root, results, cfg)
    out = [root / "report.html"]
    if screenshot:
        from esgrpo.report.render import screenshot as shoot

        png = shoot(root / "report.html", root / "figures" / "report-screenshot.png")
        if png is None:
            raise ConfigError("no chromium found: install the Debian package `chromium` for --screenshot")
        out.append(Path(png))
    return out
