"""One run: train with ES or GRPO on one task, then evaluate; or evaluate a model. Below the study and
the sequence, above the trainers.

`run_training` (`esgrpo train es|grpo`, every cell of the study, every stage of a sequence), step by step:
    1. load the task data and check it and the trainer settings: nothing is written before that;
    2. open the run directory (identity check against earlier work, lock);
    3. decide what the directory needs: a fresh run, the rest of an interrupted run (from its latest
       usable checkpoint), nothing (finished: reused), or more of a finished run (a larger budget,
       `--resume`): said on screen either way;
    4. train, with peak memory and measurement cost accounted by the trainer;
    5. evaluate the final weights (and any extra checkpoints) greedily on the test split; results are
       cached in eval.json per checkpoint step, so an extended run is re-evaluated.
`run_eval` (`esgrpo eval`): one model on every configured task.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

from esgrpo.checkpoints import checkpoint_policy
from esgrpo.config import EvalConfig, GenerationConfig, ModelConfig, TinyModelConfig, TrainConfig
from esgrpo.errors import EsgrpoError
from esgrpo.evaluate import evaluate
from esgrpo.models import load_policy, model_identity
from esgrpo.runs import RunDir, default_run_path
from esgrpo.tasks import check_disjoint, examples_hash, load_task_examples, task_examples
from esgrpo.tasks.base import Example, Task
from esgrpo.tasks.prompting import make_task
from esgrpo.train import es as es_trainer
from esgrpo.train import grpo as grpo_trainer
from esgrpo.train.budget import Budget

Method = Literal["es", "grpo"]


def _say(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)


def say_reward_failures(where: str, failed: int, total: int) -> None:
    """Always say when rewards failed (each scored 0): a few failures do not stop a run, but they bias it."""
    if failed:
        print(f"[{where}] {failed} of {total} rewards failed and scored 0 (a run stops when more than half of a "
              "batch fails; README: When a reward fails)", file=sys.stderr, flush=True)


def _budget_state(method: Method, cfg: TrainConfig, done: dict[str, Any] | None) -> str:
    """'finished' (the config's budget is spent), 'extend' (it is larger than what was run), 'shrink'."""
    if method == "es":
        per = cfg.es.members_per_iteration * (cfg.es.batch_size or cfg.data.n_train)
        b = Budget(max_steps=cfg.es.iterations, max_rollouts=cfg.es.max_rollouts)
        key = "iterations"
    else:
        per = cfg.grpo.prompts_per_step * cfg.grpo.group_size
        b = Budget(max_steps=cfg.grpo.steps, max_rollouts=cfg.grpo.max_rollouts)
        key = "steps"
    b.steps, b.rollouts = (done or {}).get(key, 0), (done or {}).get("rollouts", 0)
    if (b.max_steps and b.steps > b.max_steps) or (b.max_rollouts and b.rollouts > b.max_rollouts):
        return "shrink"
    return "finished" if b.stop(per) else "extend"


def run_training(method: Method, cfg: TrainConfig, run_path: str | Path | None = None,
                 extra_checkpoints: dict[str, int] | None = None, init_optimizer: Path | None = None,
                 extend: bool = False) -> dict[str, Any]:
    """Train with `method` on cfg.task and evaluate; returns {"train": ..., "eval": ..., "run": ...}.

    extra_checkpoints: label -> step whose checkpoint is evaluated too (ES short inside ES long).
    init_optimizer (GRPO): optimizer.pt whose AdamW moments start the run (a sequence's previous stage).
    extend: continue a finished run to a larger budget without `cfg.resume` (the study does).
    """
    # 1. Data and settings, checked before anything is written.
    d = cfg.data
    train = task_examples(d, cfg.task, "train", d.n_train)
    eval_tasks = cfg.eval_tasks or [cfg.task]
    test = load_task_examples(d, "test", d.n_test, tasks=eval_tasks)
    if cfg.task in test:
        check_disjoint(cfg.task, train, test[cfg.task], d.data_paths.get(cfg.task) or f"{d.source} {cfg.task} data")
    (es_trainer if method == "es" else grpo_trainer).check_inputs(cfg.es if method == "es" else cfg.grpo, train)
    inputs = {"model": model_identity(cfg.model, cfg.tiny),
              "data": examples_hash(train + [ex for t in eval_tasks for ex in test[t]])}
    path = Path(run_path or cfg.out or default_run_path(method, cfg.task))
    if method == "grpo" and cfg.grpo.backend == "trl":
        from esgrpo.train.grpo_trl import is_main_process

        if not is_main_process():
            return _train_beside_main(cfg, train, path)

    # 2. The run directory: identity check, then the lock.
    with RunDir(path, cfg, command=f"train {method}", inputs=inputs) as run:
        # 3. What it needs.
        results = run.read_results()
        has_checkpoints = (run.path / "checkpoints").exists()
        if results is not None:
            state = _budget_state(method, cfg, results)
            if state == "shrink":
                raise EsgrpoError(f"{run.path} already ran further than this config's budget "
                                  f"({results.get('iterations', results.get('steps'))} "
                                  f"{'iterations' if method == 'es' else 'steps'}); use another output directory")
            if state == "extend" and not (cfg.resume or extend):
                raise EsgrpoError(f"{run.path} is a finished run of {results.get('iterations', results.get('steps'))} "
                                  f"{'iterations' if method == 'es' else 'steps'} and this config asks for more: "
                                  "pass --resume to continue it to the new budget, or use another output directory")
            if state == "finished":
                _say(f"{run.path} is finished; reusing it")
            else:
                _say(f"continuing the finished run {run.path} to the new budget")
                results = None
        elif has_checkpoints:
            _say(f"{run.path} holds an interrupted run; resuming it from its latest usable checkpoint")
        elif cfg.resume:
            raise EsgrpoError(f"--resume: {run.path} holds no run to resume")

        # 4. Train.
        trained = results is None
        if trained:
            from esgrpo.tracking import make_tracker

            run.tracker = make_tracker(cfg.report_to, run.path)
            try:
                results = _train(method, cfg, train, run, resume=has_checkpoints, init_optimizer=init_optimizer)
            finally:
                if run.tracker is not None:
                    run.tracker.close()
                run.tracker = None

        # 5. Evaluate.
        ckpts = {"final": run.path / "checkpoints" / "final"}
        for label, step in (extra_checkpoints or {}).items():
            ckpts[label] = run.path / "checkpoints" / f"step-{step:06d}"
        tasks = {t: make_task(t, cfg.prompt, cfg.data) for t in test}
        evals = evaluate_checkpoints(run, ckpts, cfg.model, cfg.generation, test, trust_unstamped=not trained,
                                     tasks=tasks)
        say_reward_failures(f"train {method}", results.get("reward_errors", 0), results.get("rollouts", 0))
        for label, by_task in evals.items():
            for t, r in by_task.items():
                say_reward_failures(f"eval {label} {t}", r.get("reward_errors", 0), r.get("n", 0))
        return {"train": results, "eval": evals, "run": str(run.path), "trained": trained}


def _train(method: Method, cfg: TrainConfig, train: list[Example], run: RunDir, resume: bool,
           init_optimizer: Path | None) -> dict[str, Any]:
    task = make_task(cfg.task, cfg.prompt, cfg.data)
    policy = load_policy(cfg.model, cfg.tiny, engine=cfg.generation.engine)
    if method == "grpo" and cfg.grpo.backend == "trl":
        from esgrpo.train.grpo_trl import train_grpo_trl

        return train_grpo_trl(policy, task, train, cfg.grpo, run, resume=resume, init_optimizer=init_optimizer,
                              stop=cfg.prompt.stop)
    if method == "grpo":
        return grpo_trainer.train_grpo(policy, task, train, cfg.grpo, run, resume=resume,
                                       init_optimizer=init_optimizer)
    if cfg.es.backend == "sequential":
        return es_trainer.train_es(policy, task, train, cfg.es, run, resume=resume)
    from esgrpo.train.ray_population import evaluator_for

    evaluator = evaluator_for(cfg, policy, task, run.path / "updates.jsonl")
    try:
        results = es_trainer.train_es(policy, task, train, cfg.es, run, resume=resume, evaluator=evaluator)
        evaluator.close()  # the workers' final weights must equal the driver's
    finally:
        evaluator.close(check=False)
    results["ray"] = {"workers": cfg.ray.workers, "startup_seconds": evaluator.startup_seconds,
                      "worker_restarts": evaluator.restarts, "worker_info": evaluator.worker_info}
    run.write_results(results)
    return results


def _train_beside_main(cfg: TrainConfig, train: list[Example], path: Path) -> dict[str, Any]:
    """A process of a multi-process TRL job (accelerate launch) other than the main one: it trains beside the
    main process, which owns the run directory (identity check, records, checkpoints, evaluation)."""
    from esgrpo.train.grpo_trl import train_grpo_trl

    policy = load_policy(cfg.model, cfg.tiny)
    task = make_task(cfg.task, cfg.prompt, cfg.data)
    train_grpo_trl(policy, task, train, cfg.grpo, None, resume=(path / "trl").is_dir(), out=path,
                   stop=cfg.prompt.stop)
    return {"train": None, "eval": None, "run": str(path), "trained": True}


def _checkpoint_step(ckpt: Path) -> int | None:
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    return state.get("iteration", state.get("step"))


def evaluate_checkpoints(run: RunDir, checkpoints: dict[str, Path], model: ModelConfig, gen: GenerationConfig,
                         test: dict[str, list[Example]], trust_unstamped: bool = True,
                         tasks: dict[str, Task] | None = None) -> dict[str, Any]:
    """Greedy test accuracy of named checkpoints, cached in run/eval.json (resumable).

    Each entry records the checkpoint's training step: when a checkpoint changed (a finished run was
    extended, so `final` moved on), its entry is recomputed. trust_unstamped: keep entries written
    without a step (older esgrpo) unless training just changed the checkpoints."""
    record = run.record("eval.json")
    for label, ckpt in checkpoints.items():
        step = _checkpoint_step(ckpt)
        entry = record.get(label, default={})
        if entry.get("step", step if trust_unstamped else None) != step:
            entry = {}
        todo = {t: exs for t, exs in test.items() if t not in entry}
        if not todo:
            continue
        policy = checkpoint_policy(ckpt, model, engine=gen.engine)
        entry.update(evaluate(policy, todo, gen, label=f"{label} ", tasks=tasks))
        entry["step"] = step
        record.put(entry, label)
    return {label: {t: v for t, v in record.at(label).items() if t != "step"} for label in checkpoints}


def run_eval(cfg: EvalConfig, run_path: str | Path | None = None, tiny: TinyModelConfig | None = None,
             reuse: bool = False) -> dict[str, Any]:
    """`esgrpo eval`: one model, all configured tasks; returns results (also in results.json).

    reuse: a finished evaluation in the directory is returned as is (the study)."""
    n = cfg.data.n_test if cfg.split == "test" else cfg.data.n_train
    examples = load_task_examples(cfg.data, cfg.split, n)  # data errors surface before model loading
    inputs = {"model": model_identity(cfg.model, tiny),
              "data": examples_hash([ex for exs in examples.values() for ex in exs])}
    path = Path(run_path or cfg.out or default_run_path("eval", cfg.model.name))
    if reuse and (done := RunDir(path, cfg, inputs=inputs).read_results()) is not None:
        print(f"[eval] reusing finished evaluation {path}", file=sys.stderr)
        return done
    policy = load_policy(cfg.model, tiny, engine=cfg.generation.engine)  # a bad model fails here, before the
    # directory is made
    with RunDir(path, cfg, command="eval", inputs=inputs) as run:
        t0 = time.time()
        tasks = {t: make_task(t, cfg.prompt, cfg.data) for t in examples}
        res = evaluate(policy, examples, cfg.generation, run=run, n_show=cfg.n_show, tasks=tasks)
        out = {"model": cfg.model.name, "split": cfg.split, "source": cfg.data.source,
               "parameters": policy.num_parameters(), "tasks": res, "seconds": time.time() - t0}
        run.write_results(out)
    print(format_accuracy_table({cfg.model.name: res}))
    for t, r in res.items():
        say_reward_failures(f"eval {t}", r["reward_errors"], r["n"])
    print(f"[eval] results in {path}", file=sys.stderr)
    return out


def format_accuracy_table(rows: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown table: one row per model, one column per task (accuracy %, n)."""
    tasks = list(next(iter(rows.values())).keys()) if rows else []
    lines = ["| model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name, res in rows.items():
        cells = [f"{100 * res[t]['accuracy']:.1f} (n={res[t]['n']})" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)



def load_train_config(path: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """The config of `esgrpo train`; a study config gets a pointer to `esgrpo study --only` instead of
    an unknown-key error (a study trains ES long with ES short as its checkpoint, and may match budgets)."""
    from esgrpo.config import StudyConfig, config_fields, load_config, read_yaml
    from esgrpo.errors import ConfigError

    if path:
        data = read_yaml(path)
        train_keys = {k.split(".")[0] for k in config_fields(TrainConfig)}
        study_keys = {k.split(".")[0] for k in config_fields(StudyConfig)}
        study_only = sorted((set(data) - train_keys) & study_keys)
        if study_only:
            raise ConfigError(f"{path} is a study config ({', '.join(study_only)}): to re-run one cell of its "
                              f"Table 1, use `esgrpo study --config {path} --only TASK:es` (ES short and long) or "
                              "`--only TASK:grpo`")
    return load_config(TrainConfig, path, overrides)
