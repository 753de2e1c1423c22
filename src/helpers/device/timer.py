"""The one timer: wall time of a block, synchronized on every device of a placement."""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

import torch


class Timed(Protocol):
    """What a timer needs of the backend that makes it (helpers.device.backends.Backend)."""

    api: Any  # torch.cuda / torch.npu, None on cpu
    spread: bool  # more than one device: events cannot bracket the work
    devices: tuple[torch.device, ...]
    timer_protocol: str

    @property
    def sel(self) -> Any: ...

    def synchronize(self) -> None: ...


class Timer:
    """Wall time of a block, synchronized: `with be.timer() as t: ...; t.seconds`.

    On cuda/npu every device of the backend's placement is synchronized before the start and
    after the end. On one device a pair of device events (Event(enable_timing=True)) on its
    current stream brackets the block and seconds = event elapsed time; over several devices
    (DEVICE_MAP=auto) events on one stream cannot bracket work queued on the others, so
    seconds = host perf_counter time between the two all-device synchronizations. On cpu:
    time.perf_counter around the block. host_seconds is the perf_counter time of the same
    block on every backend.
    """

    def __init__(self, backend: Timed) -> None:
        self._be = backend
        self.seconds: float = math.nan
        self.host_seconds: float = math.nan
        self._events: tuple[Any, Any] | None = None
        self._t0 = 0.0

    @property
    def protocol(self) -> str:
        return self._be.timer_protocol

    def __enter__(self) -> Timer:
        be = self._be
        be.synchronize()
        if be.api is not None and not be.spread:
            stream = be.api.current_stream(be.sel.device)
            start = be.api.Event(enable_timing=True)
            end = be.api.Event(enable_timing=True)
            self._events = (start, end)
            self._t0 = time.perf_counter()
            start.record(stream)
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        be = self._be
        if self._events is not None:
            start, end = self._events
            end.record(be.api.current_stream(be.sel.device))
            be.synchronize()
            self.host_seconds = time.perf_counter() - self._t0
            self.seconds = start.elapsed_time(end) / 1000.0  # ms -> s
        else:
            be.synchronize()
            self.host_seconds = time.perf_counter() - self._t0
            self.seconds = self.host_seconds
