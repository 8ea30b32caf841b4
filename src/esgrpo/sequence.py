"""Sequential post-training (continual learning): the tasks one after another, no replay.

For each method (ES short, ES long, GRPO by default, and the ES variant arms of `es_variants`) stage s
trains on task order[s-1] starting from stage s-1's weights (stage 0 = the base model), with the method's
single-task budget per stage. Each
stage is an ordinary training run whose base model is the previous stage's checkpoint, so it is
resumable on its own; ES and GRPO seeds are offset per stage (seed + 1000 s) so stages do not reuse
the same noise directions / prompt orders. GRPO starts every stage with a fresh AdamW unless
`keep_optimizer` (then the previous stage's moments, with this stage's learning-rate schedule).

After the base and after every stage: greedy test accuracy on every task, the held-out corpus NLL
(tiny model), ||theta_stage - theta_base||, and the incremental KL(pi_stage || pi_previous) on every
task's prompts. Everything lands in `<out>/sequence.json` as soon as it is measured; a rerun skips
every finished measurement and stage. The output directory is a run directory: reopening it with other
settings is refused with the changed keys named. With `reuse` (a study directory), stage 1 of each
method is the study's single-task run on the first task (ES short = ES long's checkpoint at the short
budget), after checking that the study's model, data and trainer settings equal the sequence's.

Metrics (R[s][j] = accuracy on task j after stage s, S stages, task j trained at stage j):
    average accuracy = mean_j R[S][j]
    backward transfer BWT = mean_{j < S} (R[S][j] - R[j][j])            (negative = forgetting)
    forgetting_j = max_{j <= s < S} R[s][j] - R[S][j]  for j < S       (Chaudhry et al. 2018)
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from esgrpo.config import SequenceConfig, StudyConfig, TrainConfig, identity, identity_changes
from esgrpo.errors import EsgrpoError
from esgrpo.runs import JsonRecord, RunDir

STAGE_SEED_STRIDE = 1000


# --- metrics (pure functions of the accuracy matrix) --------------------------------------------


def sequence_metrics(matrix: list[dict[str, float]], order: list[str]) -> dict[str, Any]:
    """matrix[s][task] = accuracy after stage s (s = 0 is the base); see the module docstring."""
    S = len(order)
    if len(matrix) != S + 1:
        raise ValueError(f"need base + {S} stages of accuracies, got {len(matrix)} rows")
    final = matrix[S]
    avg = sum(final[t] for t in order) / S
    bwt = [final[t] - matrix[j + 1][t] for j, t in enumerate(order[:-1])]
    forgetting = {t: max(matrix[s][t] for s in range(j + 1, S)) - final[t] for j, t in enumerate(order[:-1])}
    return {"average_accuracy": avg, "bwt": sum(bwt) / len(bwt) if bwt else 0.0, "forgetting": forgetting,
            "mean_forgetting": sum(forgetting.values()) / len(forgetting) if forgetting else 0.0,
            "gain_on_trained": {t: matrix[j + 1][t] - matrix[j][t] for j, t in enumerate(order)}}


def kl_split(kl: list[dict[str, float]], order: list[str]) -> dict[str, float]:
    """Mean incremental KL on the stage's own task (diagonal) and on the other tasks (off-diagonal).

    kl[s - 1][task] = KL(pi_s || pi_{s-1}) on `task`'s prompts, for stages s = 1..S."""
    on = [kl[s][t] for s, t in enumerate(order)]
    off = [kl[s][u] for s, t in enumerate(order) for u in kl[s] if u != t]
    return {"diagonal": sum(on) / len(on), "off_diagonal": sum(off) / len(off) if off else float("nan")}


# --- the stage loop ------------------------------------------------------------------------------


class Runner:
    """What the loop needs per stage; the real one trains and measures, tests script a fake one."""

    def train(self, method: str, stage: int, task: str, init: str) -> str:
        """Train `method` on `task` from checkpoint `init`; return the stage checkpoint."""
        raise NotImplementedError

    def accuracy(self, ckpt: str) -> dict[str, float]:
        raise NotImplementedError

    def extras(self, ckpt: str, prev: str) -> dict[str, Any]:
        """{"norm", "heldout_nll", "kl": {task: {...}}} of a stage (prev: the stage before)."""
        raise NotImplementedError


def run_stages(runner: Runner, order: list[str], methods: list[str], base: str, out: Path,
               header: dict[str, Any] | None = None, ray: Any = None) -> dict[str, Any]:
    """The sequence for every method, resumable; returns sequence.json's contents (matrices, metrics).

    The base is measured first; then each method's chain of stages is one job (parallel.run_jobs: here,
    one after another, or in parallel on Ray with `ray` a RayConfig), keeping its progress in
    `sequence-<method>.json` as every measurement finishes; finished methods are merged into
    sequence.json. header: the settings the record belongs to (JsonRecord refuses other ones)."""
    from esgrpo.parallel import Job, run_jobs

    out.mkdir(parents=True, exist_ok=True)
    rec = JsonRecord(out / "sequence.json", header, what="sequence settings")
    if "base" not in rec.data:
        rec.data["base"] = {"checkpoint": base, "accuracy": runner.accuracy(base), **runner.extras(base, base)}
        rec.save()
    todo = [m for m in methods if not rec.has("methods", m, "metrics")]
    jobs = [Job(f"sequence {m}", run_method, (runner, m, order, rec.data["base"], out / f"sequence-{m}.json"))
            for m in todo]
    for m, data in zip(todo, run_jobs(jobs, ray), strict=True):
        rec.put(data, "methods", m)
    return rec.data


def run_method(runner: Runner, method: str, order: list[str], base: dict[str, Any], path: Path) -> dict[str, Any]:
    """One method through every stage, resumable from its record at `path`; returns its stages and metrics.

    A finished stage (trained and measured) is never recomputed; a stage interrupted after training and
    before measuring is measured again."""
    rec = JsonRecord(path)
    stages = rec.data.setdefault("stages", [])
    prev = base["checkpoint"]
    t0 = time.time()
    for s, task in enumerate(order, start=1):
        if len(stages) >= s and "kl" in stages[s - 1]:  # finished stage: never recomputed
            prev = stages[s - 1]["checkpoint"]
            continue
        print(f"[sequence] {method} stage {s}/{len(order)}: {task} ({time.time() - t0:.0f}s)", file=sys.stderr,
              flush=True)
        if len(stages) < s:
            stages.append({"task": task, "checkpoint": runner.train(method, s, task, prev)})
            rec.save()
        st = stages[s - 1]
        if "accuracy" not in st:
            st["accuracy"] = runner.accuracy(st["checkpoint"])
            rec.save()
        st.update(runner.extras(st["checkpoint"], prev))
        rec.save()
        prev = st["checkpoint"]
    matrix = [base["accuracy"]] + [st["accuracy"] for st in stages]
    rec.data["metrics"] = sequence_metrics(matrix, order)
    rec.data["kl_split"] = kl_split([{t: v["kl"] for t, v in st["kl"].items()} for st in stages], order)
    rec.save()
    return rec.data


class TrainingRunner(Runner):
    """Stages as training runs (runs/<method>/stage-<s>-<task>/), measured on the test split."""

    def __init__(self, cfg: SequenceConfig, out: Path) -> None:
        from esgrpo.tasks import load_task_examples
        from esgrpo.tasks.prompting import make_task

        self.cfg, self.out = cfg, out
        self.data = dataclasses.replace(cfg.data, n_test=sequence_n_test(cfg))
        self.test = load_task_examples(self.data, "test", self.data.n_test, tasks=cfg.sequential.order)
        self.tasks = {t: make_task(t, cfg.prompt, cfg.data) for t in self.test}

    def _stage_cfg(self, method: str, stage: int, task: str, init: str) -> TrainConfig:
        c = self.cfg
        if method in c.es_variants:  # an ES variant arm: its own es settings, ES short's budget unless it sets one
            es = dataclasses.replace(c.variant_es(method), seed=c.es.seed + STAGE_SEED_STRIDE * (stage - 1))
        else:
            es = dataclasses.replace(c.es, seed=c.es.seed + STAGE_SEED_STRIDE * (stage - 1),
                                     iterations=c.es.iterations * (c.es_long_factor if method == "es_long" else 1))
        grpo = dataclasses.replace(c.grpo, seed=c.grpo.seed + STAGE_SEED_STRIDE * (stage - 1))
        model = c.model if stage == 1 else dataclasses.replace(c.model, name=init)
        return TrainConfig(model=model, tiny=c.tiny, data=self.data, prompt=c.prompt, generation=c.generation, es=es,
                           grpo=grpo, ray=c.ray, report_to=c.report_to, task=task)

    def _reused(self, method: str, task: str) -> str | None:
        if not self.cfg.reuse:
            return None
        runs = Path(self.cfg.reuse) / "runs"
        short = self.cfg.es.iterations
        path = {"es_short": runs / f"{task}-es" / "checkpoints" / f"step-{short:06d}",
                "es_long": runs / f"{task}-es" / "checkpoints" / "final",
                "grpo": runs / f"{task}-grpo" / "checkpoints" / "final"}.get(
            method, runs / f"{task}-es-{method}" / "checkpoints" / "final")  # a variant arm
        return str(path) if (path / "config.json").exists() else None

    def train(self, method: str, stage: int, task: str, init: str) -> str:
        from esgrpo.run import run_training

        if stage == 1 and (found := self._reused(method, task)):
            print(f"[sequence] stage 1 of {method} = the single-task run {found}", file=sys.stderr)
            return found
        run_dir = self.out / "runs" / method / f"stage-{stage}-{task}"
        init_opt = None
        if method == "grpo" and self.cfg.sequential.keep_optimizer and stage > 1:
            init_opt = Path(init) / "optimizer.pt"
        run_training("grpo" if method == "grpo" else "es", self._stage_cfg(method, stage, task, init), run_dir,
                     init_optimizer=init_opt)
        return str(run_dir / "checkpoints" / "final")

    def accuracy(self, ckpt: str) -> dict[str, float]:
        from esgrpo.run import evaluate_checkpoints

        run = RunDir(self.out / "evals" / Path(ckpt).as_posix().strip("/").replace("/", "__")[-120:])
        run.path.mkdir(parents=True, exist_ok=True)
        res = evaluate_checkpoints(run, {"model": Path(ckpt)}, self.cfg.model, self.cfg.generation, self.test,
                                   tasks=self.tasks)
        return {t: res["model"][t]["accuracy"] for t in self.test}

    def extras(self, ckpt: str, prev: str) -> dict[str, Any]:
        from esgrpo.analysis.capability import heldout_nll, heldout_path
        from esgrpo.analysis.kl import kl_drift
        from esgrpo.analysis.weights import update_norms
        from esgrpo.checkpoints import checkpoint_policy

        s = self.cfg.sequential
        base = self.base_dir()
        policy = checkpoint_policy(ckpt, self.cfg.model)
        out: dict[str, Any] = {"norm": update_norms(base, ckpt)["total"]["abs"]}
        if s.heldout_docs and heldout_path(base) is not None:
            out["heldout_nll"] = heldout_nll(policy, base, s.heldout_docs)["nll"]
        if ckpt == prev:
            out["kl"] = {t: {"kl": 0.0, "kl_se": 0.0} for t in self.test}
            return out
        ref = checkpoint_policy(prev, self.cfg.model)
        ex = {t: v[:s.kl_prompts] for t, v in self.test.items()}
        kl = kl_drift(policy, ref, ex, s.kl_samples, s.kl_max_new_tokens, seed=0,
                      batch_size=self.cfg.generation.batch_size, tasks=self.tasks)
        out["kl"] = {t: {"kl": r["kl"], "kl_se": r["kl_se"], "kl_per_token": r["kl_per_token"]} for t, r in kl.items()}
        return out

    def base_dir(self) -> str:
        from esgrpo.checkpoints import base_checkpoint
        from esgrpo.models import resolve_model_path

        return str(base_checkpoint(resolve_model_path(self.cfg.model, self.cfg.tiny)))


def sequence_n_test(cfg: SequenceConfig) -> int:
    n = cfg.sequential.n_test
    return min(n, cfg.data.n_test) if n else cfg.data.n_test


# The settings that decide the weights of stage 1 (and so whether a study's run can be reused as it).
_STAGE1_SECTIONS = ("model.", "tiny.", "data.", "es.", "grpo.", "es_long_factor", "es_variants")
_STAGE1_IGNORED = ("data.n_test", "data.tasks")


def _stage1_identity(cfg: Any) -> dict[str, Any]:
    return {k: v for k, v in identity(cfg).items() if k.startswith(_STAGE1_SECTIONS) and k not in _STAGE1_IGNORED}


def check_reuse(cfg: SequenceConfig) -> None:
    """`reuse` names a study whose model, data and trainer settings equal this sequence's."""
    if not cfg.reuse:
        return
    study = RunDir(cfg.reuse).saved_config(StudyConfig)
    changed = identity_changes(_stage1_identity(study), _stage1_identity(cfg))
    if changed:
        raise EsgrpoError(f"reuse: the study {cfg.reuse} was made with other settings (changed: "
                          f"{'; '.join(changed[:8])}); its runs cannot serve as stage 1 of this sequence")


def settings_summary(cfg: SequenceConfig) -> dict[str, Any]:
    """What the report says about the sequence's settings."""
    s = cfg.sequential
    return {"order": s.order, "methods": cfg.arms(), "es_iterations": cfg.es.iterations,
            "es_long_factor": cfg.es_long_factor, "grpo_steps": cfg.grpo.steps,
            "grpo_max_rollouts": cfg.grpo.max_rollouts, "keep_optimizer": s.keep_optimizer,
            "n_test": sequence_n_test(cfg), "model": cfg.model.name}


def run_sequence(cfg: SequenceConfig) -> dict[str, Any]:
    """`esgrpo sequence`: all methods through all stages, into `cfg.out` (a run directory: other settings
    in it are refused, naming the changed keys)."""
    from esgrpo.models import model_identity

    check_reuse(cfg)
    runner = TrainingRunner(cfg, Path(cfg.out))
    base = runner.base_dir()
    with RunDir(cfg.out, cfg, command="sequence", inputs={"model": model_identity(cfg.model, cfg.tiny)}) as run:
        rec = JsonRecord(run.path / "sequence.json")
        if rec.data.get("settings") != settings_summary(cfg):
            rec.put(settings_summary(cfg), "settings")
        s = cfg.sequential
        return run_stages(runner, s.order, cfg.arms(), base, run.path, ray=cfg.ray if cfg.parallel == "ray" else None)
