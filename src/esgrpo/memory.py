"""Peak memory of a block of work, measured, not estimated; and device sync for honest timings.

On CUDA: torch's peak allocated bytes (reset at entry). On CPU: a background thread samples the
process's resident set size every few milliseconds; the figure is the peak minus the RSS at entry,
so it counts what the block added (weights copies, optimizer state, activations, KV cache).
"""

from __future__ import annotations

import resource
import sys
import threading

import psutil
import torch


class PeakMemory:
    """`with PeakMemory(device) as m: ...`; then `m.peak_bytes` (added by the block) and `m.kind`."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes = 0
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_rss_delta"
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._proc = psutil.Process()
            self._base = self._proc.memory_info().rss
            self._peak = self._base
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._proc.memory_info().rss)
            self.peak_bytes = int(self._peak - self._base)


def sync(device: torch.device) -> None:
    """Wait for queued kernels: CUDA runs asynchronously, so phase timings need a sync."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def process_peak_bytes(device: torch.device) -> tuple[int, str]:
    """Process-wide peak: accelerator peak allocated on GPU, peak resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "max_rss"  # Linux: KiB, macOS: bytes
