"""The ES population on Ray: bit-identical to the sequential backend with 1, 2 and 3 workers, through a
worker killed mid-iteration, with the bytes it moves counted; clear errors for bad Ray settings.

The module starts its own local Ray (3 logical CPUs) and stops it at the end, leaving no process behind.
"""

from __future__ import annotations

import dataclasses
import time

import psutil
import pytest
import torch

from esgrpo.checkpoints import same_weights
from esgrpo.config import ESConfig, ModelConfig, RayConfig, TinyModelConfig
from esgrpo.errors import EsgrpoError
from esgrpo.models import load_policy, resolve_model_path
from esgrpo.parallel import check_resources, connect, init_local
from esgrpo.runs import RunDir
from esgrpo.tasks import get_task, load_examples
from esgrpo.train.es import train_es
from esgrpo.train.population import es_scorer

ray = pytest.importorskip("ray")

CPUS = 3
ES = ESConfig(population=6, sigma=0.02, alpha=0.02, iterations=3, batch_size=0, max_new_tokens=24,
              checkpoint_every=1)
TASK = get_task("boolq")
EXAMPLES = load_examples("boolq", "synthetic", "train", 12, seed=1234)
BASE = resolve_model_path(ModelConfig(), TinyModelConfig())


def _ray_processes(session: str) -> list[psutil.Process]:
    """The processes of the Ray session whose directory is `session` (not those of another Ray on the machine,
    e.g. a study running beside the tests)."""
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if session in cmd and (p.info["name"] in ("raylet", "gcs_server")
                               or "ray/_private/workers/default_worker.py" in cmd):
            out.append(p)
    return out


@pytest.fixture(scope="module")
def local_ray():
    assert not ray.is_initialized()
    init_local(num_cpus=CPUS, log_to_driver=False)
    session = ray._private.worker._global_node.get_session_dir_path()
    assert _ray_processes(session)  # the check below sees this session's processes
    yield
    ray.shutdown()
    deadline = time.time() + 30
    while _ray_processes(session) and time.time() < deadline:
        time.sleep(0.5)
    assert not _ray_processes(session), "Ray processes left behind"


def _run(tmp_path, name: str, workers: int | None, on_submit=None, cfg: ESConfig = ES):
    """train_es on the shipped tiny model with 1 torch thread: sequentially (workers None) or on Ray."""
    from esgrpo.train.ray_population import RayPopulationEvaluator

    torch.set_num_threads(1)
    policy = load_policy(ModelConfig(threads=1))
    run = RunDir(tmp_path / name)
    evaluator = None
    if workers is not None:
        evaluator = RayPopulationEvaluator(RayConfig(workers=workers, check_every=1), BASE, ModelConfig(),
                                           es_scorer(TASK, cfg), cfg.sigma, policy.named_parameters(),
                                           run.path / "updates.jsonl", on_submit=on_submit)
    try:
        res = train_es(policy, TASK, EXAMPLES, cfg, run, evaluator=evaluator)
        if evaluator is not None:
            evaluator.close()
    finally:
        if evaluator is not None:
            evaluator.close(check=False)
    return run, res, evaluator


def _updates(run: RunDir) -> list[dict]:
    return run.metrics("updates.jsonl")


@pytest.mark.slow
def test_ray_backend_equals_the_sequential_one_bit_for_bit(tmp_path, local_ray):
    seq, _, _ = _run(tmp_path, "seq", None)
    assert any(len(set(r["fitness"])) > 1 for r in _updates(seq))  # the members' fitness differs: a real update
    for workers in (1, 2, 3):
        run, res, ev = _run(tmp_path, f"ray{workers}", workers)
        assert _updates(run) == _updates(seq), workers
        assert same_weights(run.path / "checkpoints" / "final", seq.path / "checkpoints" / "final"), workers
        assert len(ev.worker_info) == workers and ev.restarts == 0
        rows = run.metrics()
        assert all(r["workers"] == workers and 0 < r["bytes_to_workers"] < 8192 and r["bytes_from_workers"] > 0
                   for r in rows)
        assert [r["reward_mean"] for r in rows] == [r["reward_mean"] for r in seq.metrics()]


@pytest.mark.slow
def test_a_worker_killed_mid_iteration_is_replaced_and_the_run_is_undisturbed(tmp_path, local_ray):
    seq, _, _ = _run(tmp_path, "seq", None)
    killed = []

    def kill_the_worker_of_member_2(ev, slot: int, index: int) -> None:
        """In iteration 2, right after a worker got member 2: the equivalent of kill -9."""
        if not killed and ev.iterations == 1 and index == 2:
            killed.append(index)
            ray.kill(ev.workers[slot], no_restart=True)

    run, _, ev = _run(tmp_path, "killed", 2, on_submit=kill_the_worker_of_member_2)
    assert killed == [2] and ev.restarts == 1
    assert _updates(run) == _updates(seq)
    assert same_weights(run.path / "checkpoints" / "final", seq.path / "checkpoints" / "final")
    assert [r["worker_restarts"] for r in run.metrics()] == [0, 1, 1]


def test_a_local_ray_binds_and_connects_on_loopback_only(local_ray):
    import ipaddress

    node = ray._private.worker.global_worker.node  # started by init_local, as connect() starts it
    for address in (node.node_ip_address, node.gcs_address.rpartition(":")[0]):
        assert ipaddress.ip_address(address).is_loopback, address


def test_more_workers_than_cpus_fails_before_any_work(tmp_path, local_ray):
    with pytest.raises(EsgrpoError, match=r"ray.workers = 5 x ray.cpus_per_worker = 1 needs 5 CPUs; the Ray "
                                          r"cluster has 3"):
        check_resources(RayConfig(workers=5), connect(RayConfig()))
    with pytest.raises(EsgrpoError, match="needs 2 GPUs; the Ray cluster has 0"):
        check_resources(RayConfig(workers=2, gpus_per_worker=1), connect(RayConfig()))


def test_a_worker_that_cannot_load_the_model_is_one_clear_line(tmp_path, local_ray):
    from esgrpo.train.ray_population import RayPopulationEvaluator

    policy = load_policy(ModelConfig(threads=1))
    with pytest.raises(EsgrpoError, match="Ray worker 0 failed to start: .*does not exist") as e:
        RayPopulationEvaluator(RayConfig(workers=1), tmp_path / "not-there", ModelConfig(), es_scorer(TASK, ES),
                               ES.sigma, policy.named_parameters(), tmp_path / "updates.jsonl")
    assert "\n" not in str(e.value)


def test_a_worker_with_other_weights_is_caught_by_the_fingerprint(tmp_path, local_ray):
    from esgrpo.train.ray_population import RayPopulationEvaluator

    policy = load_policy(ModelConfig(threads=1))
    ev = RayPopulationEvaluator(RayConfig(workers=1), BASE, ModelConfig(), es_scorer(TASK, ES), ES.sigma,
                                policy.named_parameters(), tmp_path / "updates.jsonl")
    ev.check_fingerprints()  # same base weights: equal
    with torch.no_grad():
        policy.named_parameters()[0][1].view(-1)[0] += 1e-6
    with pytest.raises(EsgrpoError, match="Ray worker 0 .* holds other weights than the driver"):
        ev.check_fingerprints()


def test_cli_with_an_unreachable_ray_address_fails_fast_and_leaves_nothing(tmp_path):
    import subprocess
    import sys

    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "esgrpo.cli", "train", "es", "--es.backend", "ray", "--ray.address",
                        "127.0.0.1:9", "--ray.connect_timeout", "5", "--data.n_train", "8", "--es.population", "2",
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    err = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and err.startswith("esgrpo: error: ray.address = '127.0.0.1:9': cannot reach"), p.stderr
    assert time.time() - t0 < 30 and not (tmp_path / "out").exists()


def test_the_study_config_exposes_the_ray_settings():
    from esgrpo.config import StudyConfig, TrainConfig, identity

    # the backend and the Ray settings steer where work runs, not its numbers: not part of a run's identity
    a = TrainConfig()
    b = dataclasses.replace(a, es=dataclasses.replace(a.es, backend="ray"), ray=RayConfig(workers=3))
    assert identity(a) == identity(b)
    assert StudyConfig().ray.workers == 2


def test_metrics_rows_of_a_ray_run_document_their_bytes():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    assert all(f"`{k}`" in text for k in ("bytes_to_workers", "bytes_from_workers", "bytes_batch", "workers",
                                          "worker_restarts"))


def test_a_new_worker_is_given_ray_start_timeout_to_be_ready(monkeypatch):
    """Starting a worker (import, model load, kernel compilation) waits ray.start_timeout, not a fixed minute."""
    import ray

    from esgrpo.train.ray_population import RayPopulationEvaluator

    seen: dict[str, float] = {}

    def fake_get(ref, timeout=None):
        seen["timeout"] = timeout
        return {"ready": ref}

    class Worker:
        class info:  # noqa: N801 (an actor method's shape: worker.info.remote())
            @staticmethod
            def remote():
                return "ref"

    monkeypatch.setattr(ray, "get", fake_get)
    ev = RayPopulationEvaluator.__new__(RayPopulationEvaluator)
    ev.cfg = RayConfig(start_timeout=123.0)
    assert ev._ready(0, Worker()) == {"ready": "ref"} and seen["timeout"] == 123.0
