"""Independent jobs one after another or as Ray tasks (parallel.run_jobs), and the study on Ray: the same
results.json, analysis.json and sequence.json as the sequential study."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from esgrpo.config import RayConfig
from esgrpo.errors import EsgrpoError
from esgrpo.parallel import Job, init_local, run_jobs

ray = pytest.importorskip("ray")
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # so Ray workers can run this module's jobs


def square(x: int) -> int:
    return x * x


def total(deps: list[int]) -> int:
    return sum(deps)


def broken(msg: str) -> None:
    raise EsgrpoError(msg)


def crash() -> None:
    raise ValueError("not a number")


JOBS = [Job("a", square, (3,)), Job("b", square, (4,)), Job("sum", total, after=(0, 1))]


@pytest.fixture(scope="module")
def local_ray():
    init_local(num_cpus=2)
    yield RayConfig(workers=2)
    ray.shutdown()


def test_jobs_run_in_order_with_their_dependencies():
    seen = []
    assert run_jobs(JOBS, None, on_done=lambda i, r: seen.append((i, r))) == [9, 16, 25]
    assert seen == [(0, 9), (1, 16), (2, 25)]


def test_jobs_on_ray_give_the_same_results_and_clear_errors(local_ray):
    seen = []
    assert run_jobs(JOBS, local_ray, on_done=lambda i, r: seen.append(i)) == [9, 16, 25]
    assert sorted(seen) == [0, 1, 2] and seen[-1] == 2  # the dependent job finishes last
    with pytest.raises(EsgrpoError, match="^data.n_test is too large$"):
        run_jobs([Job("x", broken, ("data.n_test is too large",))], local_ray)
    with pytest.raises(EsgrpoError, match="job y failed on Ray: ValueError: not a number"):
        run_jobs([Job("job y", crash)], local_ray)
    with pytest.raises(EsgrpoError, match="in a circle"):
        run_jobs([Job("p", total, after=(1,)), Job("q", total, after=(0,))], local_ray)


@pytest.mark.slow
def test_study_on_ray_equals_the_sequential_study(tmp_path, local_ray):
    from esgrpo.config import ModelConfig
    from esgrpo.study import run_study
    from test_study import small_study

    base = small_study(tmp_path / "seq", str(tmp_path / "cache"))
    base = dataclasses.replace(base, model=ModelConfig(cache_dir=str(tmp_path / "cache"), threads=1))
    run_study(base)
    par = dataclasses.replace(base, out=str(tmp_path / "ray"), parallel="ray", ray=RayConfig(workers=2))
    run_study(par)

    def strip(d):
        """Without wall times and memory readings; paths relative to the study directory."""
        timing = {"seconds", "build_seconds", "peak_memory_bytes", "peak_memory_added_bytes", "measure_seconds"}
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in timing}
        if isinstance(d, list):
            return [strip(x) for x in d]
        if isinstance(d, str):
            return d.replace(str(tmp_path / "seq"), "<study>").replace(str(tmp_path / "ray"), "<study>")
        return d

    for f in ("results.json", "analysis.json", "sequence/sequence.json"):
        a, b = (json.loads((tmp_path / s / f).read_text()) for s in ("seq", "ray"))
        assert strip(a) == strip(b), f


@pytest.mark.slow
def test_barriers_between_seeds_on_ray_equal_the_sequential_ones(tmp_path, local_ray):
    """The nulls' barrier paths and end points as jobs on two Ray workers: the same seeds.json, bit for bit, as
    one after another in this process (both at 1 thread)."""
    from esgrpo.analysis.seeds import between_seeds
    from esgrpo.config import ModelConfig
    from esgrpo.seeds import run_seeds, seed_config
    from test_seeds import two_seed_study

    cfg = two_seed_study(tmp_path / "s", str(tmp_path / "cache"))
    cfg = dataclasses.replace(cfg, model=ModelConfig(cache_dir=str(tmp_path / "cache"), threads=1), es_variants={})
    run_seeds(cfg)
    path = Path(cfg.out) / "seeds.json"
    seq = json.loads(path.read_text())
    assert len(seq["barriers"]["math"]) == 4 and len(seq["endpoints"]["math"]) == 4  # ES, GRPO 3->5; ES->GRPO x2
    path.write_text(json.dumps({k: v for k, v in seq.items() if k not in ("barriers", "endpoints")}))
    par = dataclasses.replace(cfg, parallel="ray", ray=RayConfig(workers=2))
    between_seeds(Path(cfg.out), par, {s: Path(seed_config(cfg, s).out) for s in cfg.seeds})
    on_ray = json.loads(path.read_text())
    assert on_ray["barriers"] == seq["barriers"] and on_ray["endpoints"] == seq["endpoints"]
