"""The ES population on Ray: members scored by worker actors across processes, GPUs and nodes.

`RayPopulationEvaluator` implements the `PopulationEvaluator` interface (population.py), so the ES
trainer is the same for both backends. One iteration (`evaluate`), step by step:
    1. catch up: every worker applies the updates logged since it last worked (rows of the run's
       updates.jsonl: seeds, signs, coefficients) with the trainer's own `apply_update`, so its weights
       equal the driver's; only these rows travel, never weights;
    2. the iteration's batch (prompt ids, sampling seeds) goes to each worker once;
    3. members are handed out dynamically: a free worker takes the next member, perturbs its own copy of
       the weights, scores the batch and restores them bit-exactly; each result comes back with its
       member index, so the fitness list is in member order and the update equals the sequential one;
    4. a worker that dies (killed, out of memory, node lost) has its member re-run on another worker,
       and a replacement loads the base checkpoint and replays the whole update log (up to
       `ray.max_restarts` times);
    5. every `ray.check_every` iterations, and at `close()`, each worker reports a fingerprint of its
       weights (sha256 of their bytes), which must equal the driver's.
Bytes sent between driver and workers are counted per iteration (the batch apart) and logged with the
iteration's metrics.

Each worker loads the model itself from the run's base checkpoint (the path must exist on every node:
a shared file system, or the same path). Workers run with `ray.threads_per_worker` torch threads; with
the same thread count and CPU features as the sequential backend, results are bit-identical.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from esgrpo.config import ModelConfig, RayConfig
from esgrpo.errors import EsgrpoError
from esgrpo.parallel import check_resources, connect
from esgrpo.runs import read_jsonl
from esgrpo.train.population import Batch, Member, PopulationResult, TaskScorer

UPDATE_FIELDS = ("iteration", "seeds", "signs", "coefs")  # what a worker needs of an updates.jsonl row


def fingerprint(params: list[tuple[str, Tensor]]) -> str:
    """sha256 over the names and raw bytes of the tensors, in order: equal iff bit-identical weights."""
    h = hashlib.sha256()
    for name, p in params:
        h.update(name.encode())
        t = p.detach().contiguous().cpu()
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _size(obj: Any) -> int:
    return len(pickle.dumps(obj, protocol=5))


# ----------------------------------------------------------------------------------------------
# The worker


class ESWorker:
    """One Ray actor: its own copy of the model, updated from the log, scoring members on demand."""

    def __init__(self, base_dir: str, model: ModelConfig, scorer: TaskScorer, sigma: float, threads: int,
                 device: str, engine: str = "native", rank: int = 0, other: str = "full",
                 anchored: bool = False) -> None:
        from esgrpo.models import with_engine
        from esgrpo.models.hub import load_hf
        from esgrpo.models.policy import Policy
        from esgrpo.train.population import make_perturbation

        torch.set_num_threads(threads)
        m, tok = load_hf(base_dir, dtype=model.dtype, device=device)
        self.policy = with_engine(Policy(m, tok, name=base_dir), engine, base_dir)  # one engine per actor
        self.params = self.policy.named_parameters()
        self.perturbation = make_perturbation(self.params, "exact", rank, other)
        self.w0 = [p.detach().clone() for _, p in self.params] if anchored else None  # the anchored decay's
        self.scorer, self.sigma = scorer, sigma
        self.applied = 0  # update log rows applied so far
        self.batch: Batch | None = None
        self._warm_up()

    def _warm_up(self) -> None:
        """Compile the noise kernels now (part of start-up) rather than inside the first iteration."""
        from esgrpo.train.noise import warm_up

        warm_up(self.params)

    def info(self) -> dict[str, Any]:
        import platform

        import psutil
        import ray

        return {"pid": os.getpid(), "node": platform.node(), "node_id": ray.get_runtime_context().get_node_id(),
                "rss_bytes": psutil.Process().memory_info().rss, "threads": torch.get_num_threads(),
                "device": str(self.policy.device)}

    def catch_up(self, rows: list[dict[str, Any]]) -> int:
        """Apply the logged updates this worker has not applied yet (in order); returns how many it has."""
        from esgrpo.train.es import apply_logged

        for row in rows:
            if row["iteration"] != self.applied + 1:
                continue  # already applied (a row is sent to every worker that may lack it)
            apply_logged(self.params, row, self.w0)
            self.applied += 1
        self.perturbation.snapshot()
        return self.applied

    def set_batch(self, batch: Batch) -> None:
        self.batch = batch

    def score(self, index: int, member: Member) -> tuple:
        """(index, fitness, rollouts, tokens, reward_errors, seconds per phase) of one member."""
        from esgrpo.memory import sync

        assert self.batch is not None
        seed, sign = member
        t0 = time.perf_counter()
        self.perturbation.perturb(seed, sign, self.sigma)
        sync(self.policy.device)
        t1 = time.perf_counter()
        try:
            score = self.scorer(self.policy, self.batch)
        finally:
            t2 = time.perf_counter()
            self.perturbation.restore()
            sync(self.policy.device)
        seconds = {"perturb": t1 - t0, "restore": time.perf_counter() - t2, **score.seconds}
        return index, score.reward, score.rollouts, score.tokens, score.reward_errors, seconds

    def fingerprint(self) -> str:
        return fingerprint(self.params)


# ----------------------------------------------------------------------------------------------
# The evaluator


class RayPopulationEvaluator:
    """Scores ES members on Ray workers; see the module docstring.

    params: the driver's weights (the trainer's policy), for the fingerprint check. updates_path: the run's
    updates.jsonl, where the trainer logs every update (the workers replay it). on_submit(evaluator, slot,
    index): a hook called when a member is handed to a worker (the tests kill a worker mid-iteration with it).
    """

    def __init__(self, cfg: RayConfig, base_dir: str | Path, model: ModelConfig, scorer: TaskScorer, sigma: float,
                 params: list[tuple[str, Tensor]], updates_path: str | Path,
                 on_submit: Callable[[RayPopulationEvaluator, int, int], None] | None = None,
                 engine: str = "native", rank: int = 0, other: str = "full", anchored: bool = False) -> None:
        import ray

        t0 = time.perf_counter()
        check_resources(cfg, connect(cfg))
        self.cfg, self.params, self.updates_path = cfg, params, Path(updates_path)
        self.on_submit = on_submit
        device = "cuda" if cfg.gpus_per_worker > 0 else "cpu"
        self._actor_cls = ray.remote(num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker)(ESWorker)
        self._args = (str(base_dir), model, scorer, sigma, cfg.threads_per_worker, device, engine, rank, other,
                      anchored)
        self.restarts = 0
        self.iterations = 0
        self.workers = [self._actor_cls.remote(*self._args) for _ in range(cfg.workers)]
        self.worker_info = [self._ready(i, w) for i, w in enumerate(self.workers)]
        self.startup_seconds = time.perf_counter() - t0

    def _ready(self, slot: int, worker: Any) -> dict[str, Any]:
        import ray

        try:
            return ray.get(worker.info.remote(), timeout=self.cfg.start_timeout)
        except Exception as e:
            self.close(check=False)
            cause = " ".join(str(getattr(e, "cause", None) or e).split())
            raise EsgrpoError(f"Ray worker {slot} failed to start: {cause[-300:]}") from None

    # -- one iteration --------------------------------------------------------------------------

    def evaluate(self, members: list[Member], batch: Batch) -> PopulationResult:
        import ray

        # 1. Catch up on the update log (only the rows since the last iteration travel).
        rows = self._log_rows()
        new = rows[self.iterations:]
        sent = _size(new) * len(self.workers)
        self._all(lambda w: w.catch_up.remote(new))
        self.iterations = len(rows)
        if self.cfg.check_every and self.iterations and self.iterations % self.cfg.check_every == 0:
            self.check_fingerprints()

        # 2. The batch, once per worker.
        batch_ref = ray.put(batch)
        self._all(lambda w: w.set_batch.remote(batch_ref))

        # 3. Members handed out dynamically, results put back in member order.
        res = PopulationResult(fitness=[0.0] * len(members))
        todo, busy = deque(range(len(members))), {}
        received = 0

        def submit(slot: int) -> None:
            nonlocal sent
            i = todo.popleft()
            sent += _size((i, members[i]))
            busy[self.workers[slot].score.remote(i, members[i])] = (slot, i)
            if self.on_submit is not None:
                self.on_submit(self, slot, i)

        for slot in range(len(self.workers)):
            if todo:
                submit(slot)
        while busy:
            ready, _ = ray.wait(list(busy), num_returns=1)
            slot, i = busy.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:
                # 4. A dead worker: its member goes back in the queue, a replacement takes its slot.
                todo.appendleft(i)
                self._replace(slot, e, rows, batch_ref)
            except ray.exceptions.RayTaskError as e:  # e.g. a RewardError: the worker's one-line error, as is
                cause = getattr(e, "cause", None)
                if isinstance(cause, EsgrpoError):
                    raise cause from None
                raise
            else:
                received += _size(out)
                _, fitness, rollouts, tokens, errors, seconds = out
                res.fitness[i] = fitness
                res.rollouts += rollouts
                res.tokens += tokens
                res.reward_errors += errors
                for k, v in seconds.items():
                    res.seconds[k] = res.seconds.get(k, 0.0) + v
            if todo and slot < len(self.workers):
                submit(slot)
        res.extra = {"bytes_to_workers": sent, "bytes_from_workers": received,
                     "bytes_batch": _size(batch) * len(self.workers), "workers": len(self.workers),
                     "worker_restarts": self.restarts}
        return res

    def _log_rows(self) -> list[dict[str, Any]]:
        return [{k: r[k] for k in UPDATE_FIELDS} for r in read_jsonl(self.updates_path)]

    def _all(self, call: Callable[[Any], Any]) -> list[Any]:
        """Call every worker and wait; a worker that died is replaced first."""
        import ray

        out = []
        for slot in range(len(self.workers)):
            try:
                out.append(ray.get(call(self.workers[slot])))
            except ray.exceptions.RayActorError as e:
                self._replace(slot, e, self._log_rows()[:self.iterations], None)
                out.append(ray.get(call(self.workers[slot])))
        return out

    def _replace(self, slot: int, error: Exception, rows: list[dict[str, Any]], batch_ref: Any) -> None:
        """Start a new worker in `slot`: base checkpoint + the whole update log (no weight transfer)."""
        import ray

        self.restarts += 1
        if self.restarts > self.cfg.max_restarts:
            self.close(check=False)
            raise EsgrpoError(f"Ray worker {slot} died ({type(error).__name__}) and ray.max_restarts = "
                              f"{self.cfg.max_restarts} replacements are used up; the run resumes from its last "
                              "checkpoint when started again")
        print(f"[ray] worker {slot} died ({type(error).__name__}); starting a replacement that replays "
              f"{len(rows)} logged updates", flush=True)
        worker = self._actor_cls.remote(*self._args)
        self.worker_info[slot] = self._ready(slot, worker)
        ray.get(worker.catch_up.remote(rows))
        if batch_ref is not None:
            ray.get(worker.set_batch.remote(batch_ref))
        self.workers[slot] = worker

    # -- checks and shutdown --------------------------------------------------------------------

    def check_fingerprints(self) -> None:
        """Every worker's weights must equal the driver's, bit for bit."""
        want = fingerprint(self.params)
        for slot, got in enumerate(self._all(lambda w: w.fingerprint.remote())):
            if got != want:
                self.close(check=False)
                raise EsgrpoError(f"Ray worker {slot} ({self.worker_info[slot]['node']}, pid "
                                  f"{self.worker_info[slot]['pid']}) holds other weights than the driver after "
                                  f"iteration {self.iterations}; stopping before it scores with them")

    def close(self, check: bool = True) -> None:
        """Apply the last updates, check the fingerprints (check=True), and stop the workers."""
        import ray

        if check and self.workers:
            rows = self._log_rows()
            new = rows[self.iterations:]
            self._all(lambda w: w.catch_up.remote(new))
            self.iterations = len(rows)
            self.check_fingerprints()
        for w in self.workers:
            ray.kill(w)
        self.workers = []


def evaluator_for(cfg: Any, policy: Any, task: Any, updates_path: str | Path) -> RayPopulationEvaluator:
    """The Ray evaluator of a training config (cfg: TrainConfig): workers load the base model that the
    driver's `policy` was loaded from and follow the run's update log at `updates_path`."""
    from esgrpo.checkpoints import base_checkpoint
    from esgrpo.models import resolve_model_path
    from esgrpo.train.population import es_scorer

    base = base_checkpoint(resolve_model_path(cfg.model, cfg.tiny))
    return RayPopulationEvaluator(cfg.ray, base, cfg.model, es_scorer(task, cfg.es), cfg.es.sigma,
                                  policy.named_parameters(), updates_path, engine=cfg.generation.engine,
                                  rank=cfg.es.rank, other=cfg.es.lowrank_other, anchored=cfg.es.anchor_decay != "none")
