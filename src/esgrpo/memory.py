"""Peak memory of a block of work, measured, not estimated; and device sync for honest timings.

One definition for both trainers, `bench` and the report:
    peak_memory_bytes        the process's peak while the block ran: resident set size sampled every
                             few milliseconds on CPU; torch's peak allocated bytes on CUDA
    peak_memory_added_bytes  that peak minus the memory in use when the block started (the loaded
                             model, and a reference copy made before it): what the block itself added
    memory_kind              "cpu_rss" or "cuda_allocated"
A phase of the block (a GRPO step's generation, backward, optimizer step) is measured with `lap()`: the peak
added since the previous lap, by the same definition.
"""

from __future__ import annotations

import threading
from typing import Any

import psutil
import torch


class PeakMemory:
    """`with PeakMemory(device) as m: ...`; then `m.peak_bytes`, `m.added_bytes` and `m.kind`; inside the block,
    `m.lap()` gives the peak added since the previous lap (a phase's peak)."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes = 0
        self.start_bytes = 0
        self.kind = "cuda_allocated" if self.device.type == "cuda" else "cpu_rss"
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the sampler thread and lap() both update the peaks
        self._peak = 0  # the block's peak so far (CUDA: of the laps before, whose counter was reset)
        self._lap_peak = 0  # CPU: the peak since the last lap

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = int(torch.cuda.memory_allocated(self.device))
        else:
            self._proc = psutil.Process()
            self.start_bytes = self._proc.memory_info().rss
            self._peak = self._lap_peak = self.start_bytes
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            rss = self._proc.memory_info().rss
            with self._lock:
                self._peak = max(self._peak, rss)
                self._lap_peak = max(self._lap_peak, rss)

    def lap(self) -> int:
        """Peak bytes added (over the block's start) since the previous lap, or since the start."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = int(torch.cuda.max_memory_allocated(self.device))
            self._peak = max(self._peak, peak)  # the block's peak survives the reset
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            now = self._proc.memory_info().rss
            with self._lock:
                peak = max(self._lap_peak, now)
                self._peak = max(self._peak, peak)
                self._lap_peak = now
        return max(0, peak - self.start_bytes)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = max(self._peak, int(torch.cuda.max_memory_allocated(self.device)))
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = int(max(self._peak, self._proc.memory_info().rss))

    @property
    def added_bytes(self) -> int:
        return max(0, self.peak_bytes - self.start_bytes)

    def report(self) -> dict[str, Any]:
        """The three fields every trainer result carries."""
        return {"peak_memory_bytes": self.peak_bytes, "peak_memory_added_bytes": self.added_bytes,
                "memory_kind": self.kind}


def tensor_bytes(tensors: Any) -> int:
    """Bytes held by an iterable of tensors (or (name, tensor) pairs)."""
    total = 0
    for t in tensors:
        t = t[1] if isinstance(t, tuple) else t
        total += t.numel() * t.element_size()
    return total


def sync(device: torch.device) -> None:
    """Wait for queued kernels: CUDA runs asynchronously, so phase timings need a sync."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
