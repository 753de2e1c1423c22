"""Host memory of this process: RSS now, lifetime peak, the resettable Linux peak (VmHWM), and
the host memory free for a new load (the container's limit honoured). Device memory is the
backend's (Backend.memory_rows, Backend.free_memory)."""

from __future__ import annotations

import mmap
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

MEMORY_KEYS = ("allocated", "reserved", "peak_allocated", "peak_reserved")
# Holds the host to less than it has (bytes, or with a unit: 512MiB, 8GiB, 2.5GB): what a
# memory limit would leave free, for trying the "will it fit?" rule without one.
FREE_MEMORY_ENV = "HELPERS_FREE_MEMORY"
# cgroup v2, then v1: a container's cap, often far below the host's physical memory
CGROUP_LIMITS = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                  "/sys/fs/cgroup/memory/memory.usage_in_bytes"))
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 2**10, "m": 10**6, "mb": 10**6,
          "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
          "tib": 2**40}


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


# ---- what is free for a new load ------------------------------------------------------------


@dataclass(frozen=True)
class FreeMemory:
    """Bytes a new load can still be given (host or one device), and what set the figure."""

    bytes: int
    source: str


def parse_size(text: str) -> int:
    """'8GiB', '512 MiB', '2.5GB', '1000000' -> bytes; ValueError naming the forms otherwise."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = found.group(2).lower() if found else ""
    if not found or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size; write bytes or a number with a unit, "
                         "e.g. 512MiB, 8GiB, 2.5GB")
    return int(float(found.group(1)) * _UNITS[unit])


def cgroup_free() -> int | None:
    """The container's memory limit minus what its processes use now (None: no limit set)."""
    for limit_path, usage_path in CGROUP_LIMITS:
        try:
            limit = Path(limit_path).read_text().strip()
            usage = int(Path(usage_path).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:  # v1's "no limit"
            return None
        return max(int(limit) - usage, 0)
    return None


def address_space_free() -> int | None:
    """The process's address-space limit (RLIMIT_AS, e.g. prlimit --as) minus its virtual size
    now (None: no limit). A new allocation past it fails, whatever is resident."""
    try:
        import resource
    except ImportError:
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(int(soft) - int(psutil.Process().memory_info().vms), 0)


def host_free() -> FreeMemory:
    """Host memory a new load may take: psutil's available memory, lower under a container's
    cgroup limit or the process's address-space limit, lower still when HELPERS_FREE_MEMORY
    says so."""
    free = FreeMemory(int(psutil.virtual_memory().available), "available host memory (psutil)")
    for capped, why in ((cgroup_free(), "the container's cgroup memory limit minus its usage"),
                        (address_space_free(), "the address-space limit (RLIMIT_AS) minus the "
                                               "process's virtual size")):
        if capped is not None and capped < free.bytes:
            free = FreeMemory(capped, why)
    override = os.environ.get(FREE_MEMORY_ENV, "").strip()
    if override:
        try:
            given = parse_size(override)
        except ValueError as exc:
            from helpers.errors import ConfigError

            raise ConfigError(f"{FREE_MEMORY_ENV}: {exc}") from None
        if given < free.bytes:
            free = FreeMemory(given, f"{FREE_MEMORY_ENV}={override}")
    return free


def disk_free(folder: Path) -> FreeMemory:
    """Free bytes on the file system that holds `folder` (made when missing)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    return FreeMemory(int(shutil.disk_usage(folder).free), f"free disk at {folder}")


# ---- the reader's own sanity ----------------------------------------------------------------


def touched_block(nbytes: int) -> mmap.mmap:
    """`nbytes` of fresh anonymous memory with every page written, so all of it is resident.

    An anonymous mapping never reuses pages the process already holds, as a malloc'ed block
    may (glibc serves a request from a free, already resident region of its heap when it has
    one, so the RSS would not move); close() returns it to the system.
    """
    import torch

    block = mmap.mmap(-1, nbytes)
    torch.frombuffer(block, dtype=torch.uint8)[::mmap.PAGESIZE].fill_(1)  # one byte a page
    return block
