"""Benchmarks and the GPU check run (tiny sizes, CPU): they print what they promise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from esgrpo.cli import main

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    """scripts/gpu_check.py's code paths on a CPU with tiny shapes (the real check needs CUDA)."""
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--small"],
                       capture_output=True, text=True, timeout=600, env={"OUT": str(tmp_path), "PATH": "/usr/bin"})
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert all(v["identical_words"] and v["max_abs_diff"] == 0.0 for v in report["noise"].values())
    assert report["tiny"]["es_iteration_seconds"] > 0 and report["tiny"]["grpo_reward"] is not None
    assert set(report["es_overhead"]["small"]["seconds_per_member"]) == {"perturb", "restore", "update"}


def test_bench_rollout_compares_with_hugging_face_generate(capsys):
    assert main(["bench", "rollout", "--task", "boolq", "--batch", "8", "--repeats", "1",
                 "--generation.max_new_tokens", "16"]) == 0
    out = capsys.readouterr().out
    for line in ("esgrpo lean", "esgrpo generic", "HF generate", "identical tokens, lean vs HF generate"):
        assert line in out
    assert "8/8 rows" in out


def test_bench_throughput_is_per_iteration_from_cumulative_counts():
    """metrics rows carry cumulative rollouts and tokens: the table divides each iteration's own counts (after the
    first, compiling, iteration) by its seconds, by hand here."""
    from esgrpo.bench import _table

    rows = [{"rollouts": 100, "tokens": 1000, "iteration_seconds": 9.0},
            {"rollouts": 200, "tokens": 3000, "iteration_seconds": 2.0},
            {"rollouts": 300, "tokens": 4000, "iteration_seconds": 2.0}]
    line = next(x for x in _table("es", rows) if "throughput" in x)
    # iterations 2 and 3: 100 rollouts and 2000 / 1000 tokens each, 2 s each -> 50 rollouts/s, 750 tokens/s
    assert line.strip() == "throughput: 50.0 rollouts/s, 750 generated tokens/s"


def test_bench_grpo_table_gives_each_phase_its_peak_memory_over_every_step():
    """The first step counts for memory (it allocates AdamW's moments) though not for time; phases the step does
    not lap (reward, ref) show no memory."""
    from esgrpo.bench import MIB, _table

    def row(seconds: float, gen: int, back: int, step: int) -> dict:
        return {"rollouts": 8, "tokens": 80, "step_seconds": seconds, "t_generate": seconds / 2,
                "mem_generate": gen * MIB, "mem_backward": back * MIB, "mem_step": step * MIB}

    lines = _table("grpo", [row(9.0, 10, 50, 300), row(2.0, 200, 400, 100)])
    cells = {x.split()[0]: x.split()[1:] for x in lines[1:]}
    assert lines[0].split()[-3:] == ["peak", "added", "MiB"]
    assert cells["generate"] == ["1.000", "50.0%", "200.0"] and cells["backward"][-1] == "400.0"
    assert cells["step"][-1] == "300.0" and cells["reward"][-1] == cells["ref"][-1] == "-"
    assert _table("es", [{"rollouts": 1, "tokens": 1, "iteration_seconds": 1.0}])[0].split() == ["phase", "s/iter",
                                                                                                  "share"]


def test_bench_noise_times_each_phase_compiled_and_eager(capsys):
    assert main(["bench", "noise", "--repeats", "1", "--model.threads", "1"]) == 0
    out = capsys.readouterr().out
    for phase in ("perturb", "restore", "update share", "total"):
        line = next(x for x in out.splitlines() if x.strip().startswith(phase))
        compiled, eager, ratio = line.split()[-3:]
        assert float(compiled) > 0 and float(eager) > 0 and ratio.endswith("x")
    assert "M normals/s compiled" in out and "1,918,656 parameters" in out and "the Philox words alone take" in out


def test_eager_kernels_draw_the_same_noise_and_give_the_compiled_kernels_back():
    from esgrpo.train import noise

    compiled = noise.tensor_noise(5, "w", (5000,))
    before = dict(noise._KERNELS)
    with noise.eager_kernels():
        assert noise._KERNELS[("_noise", "cpu")] is noise._noise
        eager = noise.tensor_noise(5, "w", (5000,))
    assert before == noise._KERNELS
    assert float((eager - compiled).abs().max()) < 1e-5  # the same integers; the float transforms' last bits
