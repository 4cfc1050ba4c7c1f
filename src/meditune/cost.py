"""What a piece of work costs: wall and CPU time, peak memory (RSS, and GPU on CUDA) and tokens processed.

Token counters: the code that does the work calls `count_tokens(kind, n)` (generation backends: "generated";
the MCQA log-likelihood scorer, reward and log-prob scorers: "scored"; trainers: "trained"), and `measure()`
reports how much each counter grew while it was open. The counters are process-wide (one per process; under
torchrun each rank counts its own work).

Peak RSS: on Linux, writing "5" to /proc/self/clear_refs resets the kernel's high-water mark (VmHWM) to the
current RSS, so VmHWM read at the end is the exact peak of the measured span: every page the kernel counted,
no sampling gaps, no thread. A sampling thread would miss short spikes (a logits tensor that lives for a few
milliseconds) and costs CPU. Where the reset is not available (not Linux, or refused), the process peak
`ru_maxrss` is reported instead, which is the span's peak only when the span set it (rss_method
"process-peak"). Peak GPU memory: torch.cuda.max_memory_allocated, reset at the start (CUDA only, and only when
torch is already imported: measuring never imports torch).
"""

from __future__ import annotations

import os
import re
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOKEN_KINDS = ("generated", "scored", "trained")
_tokens = dict.fromkeys(TOKEN_KINDS, 0)
_lock = threading.Lock()
CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def count_tokens(kind: str, n: int) -> None:
    """Add n tokens of a kind ("generated", "scored" or "trained") to this process's counters."""
    if kind not in _tokens:
        raise ValueError(f"unknown token kind {kind!r}; one of {TOKEN_KINDS}")
    with _lock:
        _tokens[kind] += int(n)


def token_counts() -> dict[str, int]:
    """This process's token counters so far."""
    with _lock:
        return dict(_tokens)


def _vm_kib(name: str) -> int | None:
    """A VmXXX line of /proc/self/status in KiB (None where there is no /proc)."""
    try:
        m = re.search(rf"^{name}:\s+(\d+)\s+kB", STATUS.read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def current_rss_mb() -> float | None:
    """Resident memory of this process now, in MiB (Linux; None elsewhere)."""
    kib = _vm_kib("VmRSS")
    return None if kib is None else kib / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process to its current RSS; False where that is not possible."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _vm_kib("VmHWM") is not None


def peak_rss_mb(after_reset: bool) -> tuple[float, str]:
    """(peak RSS in MiB, how it was measured): VmHWM since the last reset, else the process peak."""
    kib = _vm_kib("VmHWM") if after_reset else None
    if kib is not None:
        return kib / 1024, "vmhwm-reset"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1 << 20 if sys.platform == "darwin" else 1 << 10), "process-peak"  # macOS: bytes, Linux: KiB


def _cuda() -> Any:
    """The torch.cuda module when torch is imported and CUDA initialised, else None (never imports torch)."""
    torch = sys.modules.get("torch")
    try:
        return torch.cuda if torch is not None and torch.cuda.is_initialized() else None
    except AttributeError:
        return None


@dataclass
class Meter:
    """A span being measured (see `measure`); `result` holds the cost once it is closed."""

    wall0: float = field(default_factory=time.perf_counter)
    cpu0: float = 0.0
    tokens0: dict[str, int] = field(default_factory=token_counts)
    rss_reset: bool = False
    cuda_at_start: bool = False
    result: dict[str, Any] = field(default_factory=dict)

    def start(self) -> Meter:
        self.rss_reset = reset_peak_rss()
        cuda = _cuda()
        if cuda is not None:
            self.cuda_at_start = True
            for d in range(cuda.device_count()):
                cuda.reset_peak_memory_stats(d)
        t = os.times()
        self.cpu0 = t.user + t.system
        self.tokens0 = token_counts()
        self.wall0 = time.perf_counter()
        return self

    def stop(self) -> dict[str, Any]:
        """The cost of the span so far (also stored in `result`)."""
        wall = time.perf_counter() - self.wall0
        t = os.times()
        peak, method = peak_rss_mb(self.rss_reset)
        tokens = token_counts()
        cost: dict[str, Any] = {"wall_s": round(wall, 2), "cpu_s": round(t.user + t.system - self.cpu0, 2),
                                "peak_rss_mb": round(peak, 1), "rss_method": method}
        cuda = _cuda()
        if cuda is not None:  # initialised before the span (peak reset at its start) or during it (peak = its own)
            cost["peak_gpu_mb"] = round(max(cuda.max_memory_allocated(d) for d in range(cuda.device_count())) / (1 << 20), 1)
        for kind in TOKEN_KINDS:
            cost[f"tokens_{kind}"] = tokens[kind] - self.tokens0.get(kind, 0)
        self.result = cost
        return cost


@contextmanager
def measure() -> Iterator[Meter]:
    """Measure the enclosed work; the cost is in `meter.result` after the block (also when it raised)."""
    meter = Meter().start()
    try:
        yield meter
    finally:
        meter.stop()


def total_cost(costs: list[dict[str, Any]]) -> dict[str, Any]:
    """The cost of several spans run one after another: times and tokens add up, peaks are the largest."""
    total: dict[str, Any] = {}
    for c in costs:
        for key, value in c.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key.startswith("peak_"):
                total[key] = max(total.get(key, 0), value)
            else:
                total[key] = round(total.get(key, 0) + value, 2)
    return total
