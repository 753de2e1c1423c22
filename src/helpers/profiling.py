"""What the report itself costs: wall and CPU seconds of its named parts (a stage's sections,
model loads, compiles; the runner's kernel starts, merge, HTML and PDF), the one mechanism
`scripts/profile_report.py` reads back from results/<stage>.json and run.json.

This is the report's own bookkeeping, never a measurement it shows: device timings go through
helpers.device's synchronized timer and helpers.bench's protocol.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, every thread (its imports included),
    and of the child processes it has waited for (a probe worker, Chromium)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Profile:
    """Named parts of one process's work, in order: `with prof.part("load reference"): ...`.

    Each part records wall seconds (perf_counter) and CPU seconds (cpu_seconds: this process's
    threads and its finished children), so a shared, busy host shows as wall >> CPU rather
    than as slow code.
    """

    def __init__(self) -> None:
        self.parts: list[dict[str, Any]] = []

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        w0, c0 = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - w0, cpu_seconds() - c0)

    def add(self, name: str, wall_s: float, cpu_s: float | None = None) -> None:
        """A part timed elsewhere (a kernel start measured by the thread that made it)."""
        self.parts.append({"part": name, "wall_s": round(wall_s, 3),
                           "cpu_s": None if cpu_s is None else round(cpu_s, 3)})

    def to_list(self) -> list[dict[str, Any]]:
        return [dict(p) for p in self.parts]
