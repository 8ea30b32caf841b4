"""Experiment tracking: the metrics rows of a run, also sent to TensorBoard or trackio (`--report_to`).

metrics.jsonl stays the source of truth; a tracker is a second, optional destination that `RunDir.log`
feeds with every training row it appends, so both trainers (and every run of a study) are tracked by the
same few lines. Logged per ES iteration / GRPO step: the reward (mean, std), the update norm, the KL to
the base (when measured), the learning rate (GRPO) and generated tokens per second, under
`<trainer>/<name>`, at the iteration / step number.

TensorBoard writes event files to `<run>/tensorboard/`; trackio writes to its local database (project
"esgrpo", one run per run directory). Both are in the `tracking` extra (`pip install esgrpo[tracking]`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

from esgrpo.errors import ConfigError

Destination = Literal["none", "tensorboard", "trackio"]
SCALARS = ("reward_mean", "reward_std", "update_norm", "kl", "lr", "grad_norm", "loss")


class Tracker(Protocol):
    def log(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(row: dict[str, Any]) -> tuple[str, int, dict[str, float]] | None:
    """(trainer, step, {name: value}) of a training metrics row; None for other rows (e.g. evaluations)."""
    if "iteration" in row:
        trainer, step = "es", row["iteration"]
    elif "step" in row and row.get("trainer") == "grpo":
        trainer, step = "grpo", row["step"]
    else:
        return None
    return trainer, int(step), {k: float(row[k]) for k in SCALARS if isinstance(row.get(k), int | float)}


class _Tracker:
    """Turns a metrics row into scalars (plus generated tokens/s) and hands them to `_write`."""

    _last_tokens: float | None = None

    def log(self, row: dict[str, Any]) -> None:
        found = scalars(row)
        if found is None:
            return
        trainer, step, values = found
        values.update(self._tokens_per_second(row))
        self._write({f"{trainer}/{k}": v for k, v in values.items() if v == v}, step)  # NaN-free

    def _tokens_per_second(self, row: dict[str, Any]) -> dict[str, float]:
        """Generated tokens of this iteration / step per wall second, from the cumulative token count (the
        first row after a resume has no previous count and is skipped)."""
        seconds = row.get("iteration_seconds", row.get("step_seconds"))
        total = row.get("tokens")
        previous = 0.0 if row.get("iteration", row.get("step")) == 1 else self._last_tokens
        self._last_tokens = total
        if not seconds or total is None or previous is None:
            return {}
        return {"tokens_per_second": (total - previous) / seconds}

    def _write(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError


class TensorBoardTracker(_Tracker):
    def __init__(self, run_path: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("report_to = tensorboard needs the tensorboard package: pip install "
                              "'esgrpo[tracking]'") from None
        self.writer = SummaryWriter(log_dir=str(Path(run_path) / "tensorboard"))

    def _write(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TrackioTracker(_Tracker):
    def __init__(self, run_path: Path) -> None:
        try:
            import trackio
        except ImportError:
            raise ConfigError("report_to = trackio needs the trackio package: pip install 'esgrpo[tracking]'") from None
        self.trackio = trackio
        self.run = trackio.init(project="esgrpo", name=str(Path(run_path)).replace("/", "_")[-120:])

    def _write(self, values: dict[str, float], step: int) -> None:
        self.trackio.log(values, step=step)

    def close(self) -> None:
        self.trackio.finish()


def make_tracker(destination: Destination, run_path: Path) -> Tracker | None:
    if destination == "none":
        return None
    if destination == "tensorboard":
        return TensorBoardTracker(run_path)
    if destination == "trackio":
        return TrackioTracker(run_path)
    raise ConfigError(f"report_to = {destination!r}; choose none, tensorboard or trackio")
