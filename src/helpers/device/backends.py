"""One interface over cpu / cuda / npu: synchronize, timer, memory and properties of every
device of a placement."""

from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import Any

import torch

from helpers.device import facts, graph, memory, npu, selection
from helpers.device.selection import Selection
from helpers.device.timer import Timer
from helpers.errors import DeviceError


class Backend:
    """One interface over cpu / cuda / npu; `api` is torch.cuda or torch.npu (None on cpu).

    `devices` are the devices of the placement it measures: the selected one, or every
    accelerator a DEVICE_MAP=auto plan uses (`spanning`). Synchronization, memory and peak
    resets cover all of them. On an accelerator the selected index becomes the current device
    (set_device), so streams and events without an explicit device live on it.
    """

    def __init__(self, sel: Selection, devices: Iterable[torch.device] = ()) -> None:
        self.sel = sel
        self.name = sel.backend
        self.api: Any = _device_api(sel.backend)
        self.devices: tuple[torch.device, ...] = tuple(devices) or (sel.device,)
        if self.api is not None and sel.index is not None:
            self.api.set_device(sel.index)

    def __repr__(self) -> str:
        return f"Backend({', '.join(str(d) for d in self.devices)})"

    @property
    def spread(self) -> bool:
        """Whether the placement uses more than one device."""
        return len(self.devices) > 1

    def spanning(self, placement: Iterable[str | torch.device]) -> Backend:
        """This backend over every device of its type that `placement` uses (the selected one
        first, then by index); itself when that is only the selected device. Modules placed
        on the cpu (accelerate's offload) are host memory, which memory() reports as RSS."""
        found = {torch.device(d) for d in placement}
        mine = sorted((d for d in found if d.type == self.name and self.api is not None),
                      key=lambda d: (d != self.sel.device, d.index or 0))
        if self.sel.device not in mine:
            mine.insert(0, self.sel.device)
        if len(mine) == 1:
            return self
        return Backend(self.sel, mine)

    @property
    def timer_protocol(self) -> str:
        if self.api is None:
            return "time.perf_counter around the block (cpu: work is synchronous)"
        sync = (f"torch.{self.name}.synchronize of "
                f"{', '.join(str(d) for d in self.devices)} before the start and after the end")
        if self.spread:
            return f"time.perf_counter between {sync} (events cannot span devices)"
        return f"torch.{self.name}.Event pair (enable_timing=True) around the block; {sync}"

    def synchronize(self) -> None:
        """Wait until all queued work on every device of the placement has finished (no-op on cpu)."""
        if self.api is not None:
            for dev in self.devices:
                self.api.synchronize(dev)

    def timer(self) -> Timer:
        return Timer(self)

    def memory_rows(self) -> list[dict[str, Any]]:
        """One row per device of the placement (bytes: allocated, reserved, peak_allocated,
        peak_reserved) and, over several devices, a "total" row; [] on cpu (no allocator).

        The total of the peaks is the sum of each device's own peak (they need not coincide).
        """
        if self.api is None:
            return []
        rows = [{"device": str(dev),
                 "allocated": int(self.api.memory_allocated(dev)),
                 "reserved": int(self.api.memory_reserved(dev)),
                 "peak_allocated": int(self.api.max_memory_allocated(dev)),
                 "peak_reserved": int(self.api.max_memory_reserved(dev))} for dev in self.devices]
        if len(rows) > 1:
            rows.append({"device": "total", **{k: sum(r[k] for r in rows) for k in memory.MEMORY_KEYS}})
        return rows

    def memory(self) -> dict[str, int | None]:
        """Bytes: allocated, reserved, peak_allocated, peak_reserved (None on cpu), host RSS.

        Device figures are totals over the placement's devices (memory_rows has each one).
        peak_rss is the process's lifetime peak RSS (getrusage); peak_rss_since_reset is the
        Linux VmHWM, which reset_peak() rewinds (None where that is not available).
        """
        out: dict[str, int | None] = dict.fromkeys(memory.MEMORY_KEYS)
        rows = self.memory_rows()
        if rows:
            out.update({k: rows[-1][k] for k in memory.MEMORY_KEYS})  # the total, or the one device
        out["host_rss"] = memory.host_rss()
        out["peak_rss"] = memory.peak_rss()
        out["peak_rss_since_reset"] = memory.vm_hwm()
        return out

    def free_memory(self) -> memory.FreeMemory:
        """What a new load can be given on the selected device now: the driver's free bytes
        (mem_get_info) on an accelerator, the host's (memory.host_free) on the cpu."""
        if self.api is None:
            return memory.host_free()
        free, _total = self.api.mem_get_info(self.sel.device)
        return memory.FreeMemory(int(free), f"torch.{self.name}.mem_get_info({self.sel.device})")

    def reset_peak(self) -> None:
        """Restart peak tracking on every device of the placement, and the host VmHWM on Linux.

        The allocator's cache is emptied first: a peak reserved restarts at the bytes reserved
        now, so blocks cached by earlier work would otherwise count in this measurement's peak.
        """
        if self.api is not None:
            self.synchronize()
            gc.collect()  # tensors waiting for the collector return their blocks first
            self.empty_cache()
            for dev in self.devices:
                self.api.reset_peak_memory_stats(dev)
        memory.reset_vm_hwm()

    def empty_cache(self) -> None:
        """Return cached, unused blocks of every device of the placement to the driver (no-op
        on cpu). empty_cache acts on the current device, so each device is made current in turn."""
        if self.api is not None:
            for dev in self.devices:
                with self.api.device(dev):
                    self.api.empty_cache()

    def properties(self) -> dict[str, Any]:
        if self.name == "cuda":
            return facts.cuda_properties(self.sel.index or 0, selection._cuda_bf16_supported(self.sel.index or 0))
        if self.name == "npu":
            props = facts.npu_properties(self.api, self.sel.index or 0)
            props["aclgraph"] = graph.aclgraph_support(str(props["name"]))[1]
            return props
        return facts.cpu_properties()

    def dtype_support(self) -> dict[str, str]:
        return selection.dtype_support(self.name, self.sel.index)

    def supported_dtypes(self) -> list[str]:
        return selection.supported_dtypes(self.name, self.sel.index)


def backend(sel: Selection) -> Backend:
    return Backend(sel)


def _device_api(name: str) -> Any:
    if name == "cuda":
        return torch.cuda
    if name == "npu":
        imp = npu.import_torch_npu()
        if imp.module is None:
            raise DeviceError(f"npu backend needs torch_npu: {imp.error}")
        return imp.module.npu  # the same module torch_npu registers as torch.npu
    return None
