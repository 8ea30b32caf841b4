"""Tracking: metrics rows also go to TensorBoard / trackio; what a tracker receives, and trackio read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from esgrpo.errors import ConfigError
from esgrpo.tracking import _Tracker, make_tracker, scalars


class _Recorded(_Tracker):
    def __init__(self) -> None:
        self.written: list[tuple[dict[str, float], int]] = []

    def _write(self, values: dict[str, float], step: int) -> None:
        self.written.append((values, step))


def test_training_rows_become_scalars_with_tokens_per_second_and_other_rows_are_skipped():
    t = _Recorded()
    t.log({"iteration": 1, "reward_mean": 0.5, "update_norm": 2.0, "kl": None, "tokens": 100,
           "iteration_seconds": 4.0})
    t.log({"trainer": "grpo", "step": 2, "reward_mean": 0.25, "lr": 1e-3, "tokens": 300, "step_seconds": 2.0})
    t.log({"eval": "final", "accuracy": 0.3})  # not a training row
    t.log({"iteration": 3, "reward_mean": float("nan"), "tokens": 300, "iteration_seconds": 1.0})
    assert t.written[0] == ({"es/reward_mean": 0.5, "es/update_norm": 2.0, "es/tokens_per_second": 25.0}, 1)
    assert t.written[1] == ({"grpo/reward_mean": 0.25, "grpo/lr": 1e-3, "grpo/tokens_per_second": 100.0}, 2)
    assert t.written[2] == ({"es/tokens_per_second": 0.0}, 3)  # NaN left out
    assert len(t.written) == 3
    assert scalars({"step": 1}) is None  # a step without trainer "grpo" is not a training row


def test_first_row_after_a_resume_has_no_tokens_per_second():
    t = _Recorded()
    t.log({"iteration": 7, "reward_mean": 0.5, "tokens": 700, "iteration_seconds": 1.0})
    assert t.written == [({"es/reward_mean": 0.5}, 7)]


def test_unknown_destination_is_refused_by_name(tmp_path):
    assert make_tracker("none", tmp_path) is None
    with pytest.raises(ConfigError, match="report_to"):
        make_tracker("wandb", tmp_path)  # type: ignore[arg-type]


@pytest.mark.slow
def test_trackio_receives_every_grpo_step(tmp_path):
    """A GRPO run with --report_to trackio, then trackio's local store read back (its directory is fixed
    when trackio is imported, hence a fresh process)."""
    pytest.importorskip("trackio")
    out = tmp_path / "run"
    script = f"""
import json
from esgrpo.cli import main
main(["train", "grpo", "--task", "boolq", "--grpo.steps", "2", "--grpo.prompts_per_step", "2",
      "--grpo.group_size", "4", "--data.n_train", "8", "--data.n_test", "4", "--model.threads", "1",
      "--report_to", "trackio", "--out", {str(out)!r}])
from trackio.sqlite_storage import SQLiteStorage
runs = SQLiteStorage.get_runs("esgrpo")
logs = SQLiteStorage.get_logs("esgrpo", runs[-1])
print("LOGS", json.dumps([[r.get("step"), r.get("grpo/reward_mean")] for r in logs]))
"""
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = json.loads(done.stdout.split("LOGS", 1)[1])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == [[r["step"], r["reward_mean"]] for r in rows]
