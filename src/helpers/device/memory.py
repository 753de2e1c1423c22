"""Host memory of this process: RSS now, lifetime peak, and the resettable Linux peak (VmHWM).
Device memory is the backend's (Backend.memory_rows)."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil

MEMORY_KEYS = ("allocated", "reserved", "peak_allocated", "peak_reserved")


def host_rss() -> int:
    """Resident set size of this process, bytes."""
    return int(psutil.Process().memory_info().rss)


def peak_rss() -> int | None:
    """Lifetime peak RSS of this process in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # Windows: psutil's peak working set, already bytes
        return getattr(psutil.Process().memory_info(), "peak_wset", None)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def vm_hwm() -> int | None:
    """Linux peak RSS since the last reset (VmHWM in /proc/self/status), bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


def reset_vm_hwm() -> None:
    # writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
