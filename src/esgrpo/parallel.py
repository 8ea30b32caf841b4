"""Independent pieces of work (the study's runs, a sequence's methods, per-task analyses) one after
another in this process, or as Ray tasks in parallel.

    results = run_jobs([Job("math es", fn, args), ...], ray_cfg)

With `ray_cfg` None every job runs here, in order. Otherwise each job is a Ray task with
`ray.cpus_per_worker` CPUs, `ray.gpus_per_worker` GPUs and `ray.threads_per_worker` torch threads, at
most `ray.workers` at a time; results come back in job order, and a job that fails stops the whole
batch with its own error (an EsgrpoError keeps its one-line message). A job's function must be
importable (defined at module level) so Ray can ship it by reference. Jobs write their own run
directories, so resuming works as it does without Ray: a finished job's directory is reused.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from esgrpo.errors import EsgrpoError

if TYPE_CHECKING:
    from esgrpo.config import RayConfig


@dataclass
class Job:
    label: str
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    after: tuple[int, ...] = ()  # indices of jobs whose results this one needs (passed as `deps=`)


# A local Ray lives on a loopback address. Ray rewrites 127.0.0.1 (and "localhost") to the machine's network
# address before binding and connecting, so its processes would talk over that interface; any other address of
# 127.0.0.0/8 is kept as given.
LOCAL_RAY_IP = "127.0.0.2"


def init_local(num_cpus: int | None = None, **kwargs: Any) -> None:
    """`ray.init` of a local Ray whose processes bind and connect on the loopback address LOCAL_RAY_IP only."""
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR", _node_ip_address=LOCAL_RAY_IP,
             **kwargs)


def connect(cfg: RayConfig) -> dict[str, float]:
    """Start a local Ray (address empty) or join a cluster; returns its resources. Every failure is one
    EsgrpoError naming the address, within `connect_timeout` seconds."""
    import ray

    if not ray.is_initialized():
        if cfg.address and cfg.address != "auto":
            host, _, port = cfg.address.rpartition(":")
            try:
                socket.create_connection((host or "127.0.0.1", int(port)), timeout=cfg.connect_timeout).close()
            except (OSError, ValueError) as e:
                raise EsgrpoError(f"ray.address = {cfg.address!r}: cannot reach a Ray head there "
                                  f"({type(e).__name__}: {e}); start one with `ray start --head` or leave "
                                  "ray.address empty for a local Ray") from None
        try:
            if cfg.address:
                ray.init(address=cfg.address, logging_level="ERROR")
            else:
                init_local(num_cpus=cfg.cpus or None)
        except Exception as e:  # ConnectionError, RuntimeError, ...: one line, not a Ray traceback
            where = f"ray.address = {cfg.address!r}" if cfg.address else "a local Ray"
            raise EsgrpoError(f"{where}: Ray did not start ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:300]})") from None
    return ray.cluster_resources()


def check_resources(cfg: RayConfig, resources: dict[str, float]) -> None:
    """More workers than the cluster's CPUs (or GPUs) fails before any work, naming both numbers."""
    for kind, per in (("CPU", cfg.cpus_per_worker), ("GPU", cfg.gpus_per_worker)):
        need, have = cfg.workers * per, resources.get(kind, 0.0)
        if per and need > have:
            raise EsgrpoError(f"ray.workers = {cfg.workers} x ray.{kind.lower()}s_per_worker = {per:g} needs {need:g} "
                              f"{kind}s; the Ray cluster has {have:g}")


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any], threads: int) -> Any:
    import torch

    torch.set_num_threads(threads)
    return fn(*args, **kwargs)


def run_jobs(jobs: list[Job], ray_cfg: RayConfig | None = None, log: Callable[[str], None] | None = None,
             on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
    """Run `jobs` (see the module docstring); returns their results in order. on_done(i, result) is called
    as each job finishes (in finishing order), e.g. to record it."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    results: list[Any] = [None] * len(jobs)
    t0 = time.time()
    if ray_cfg is None:
        for i, job in enumerate(jobs):
            deps = {"deps": [results[j] for j in job.after]} if job.after else {}
            results[i] = job.fn(*job.args, **job.kwargs, **deps)
            if on_done is not None:
                on_done(i, results[i])
        return results

    import ray

    check_resources(dataclasses.replace(ray_cfg, workers=1), connect(ray_cfg))
    task = ray.remote(num_cpus=ray_cfg.cpus_per_worker, num_gpus=ray_cfg.gpus_per_worker)(_call)
    waiting = list(range(len(jobs)))
    running: dict[Any, int] = {}
    finished: set[int] = set()
    while waiting or running:
        for i in [i for i in waiting if all(j in finished for j in jobs[i].after)]:
            if len(running) >= ray_cfg.workers:
                break
            job = jobs[i]
            kwargs = {**job.kwargs, **({"deps": [results[j] for j in job.after]} if job.after else {})}
            running[task.remote(job.fn, job.args, kwargs, ray_cfg.threads_per_worker)] = i
            waiting.remove(i)
        if not running:
            raise EsgrpoError(f"jobs wait for each other in a circle: {[jobs[i].label for i in waiting]}")
        ready, _ = ray.wait(list(running), num_returns=1)
        i = running.pop(ready[0])
        try:
            results[i] = ray.get(ready[0])
        except ray.exceptions.RayTaskError as e:
            for ref in running:
                ray.cancel(ref, force=True)
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
            if isinstance(cause, EsgrpoError):
                raise cause from None
            raise EsgrpoError(f"{jobs[i].label} failed on Ray: {type(cause).__name__}: "
                              f"{' '.join(str(cause).split())[:300]}") from None
        except ray.exceptions.RayError as e:  # the worker process or its node died
            for ref in running:
                ray.cancel(ref, force=True)
            raise EsgrpoError(f"{jobs[i].label}: its Ray worker died ({type(e).__name__}); finished runs are on "
                              "disk and a rerun resumes the rest") from None
        finished.add(i)
        if on_done is not None:
            on_done(i, results[i])
        el = time.time() - t0
        eta = el / len(finished) * (len(jobs) - len(finished))
        log(f"[parallel] {len(finished)}/{len(jobs)} done: {jobs[i].label} | {el:.0f}s elapsed, ETA {eta:.0f}s")
    return results

