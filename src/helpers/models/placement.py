"""Where each module of a model lives: one device, or a DEVICE_MAP=auto plan over all devices.

The plan is made once for the whole end-to-end model (all components together, as meta
skeletons) with accelerate's get_balanced_memory + infer_auto_device_map, the same two calls
transformers makes for device_map="auto". Planning the components together is what lets an
8.4B audio chat model spread over two cards while its encoder and adapter stay with the first
LM layers. The plan is then split per component and handed to from_pretrained as an explicit
map (or used to materialize random weights), so the recorded placement is exactly the one used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from helpers import paths
from helpers.models.weights import ModelLoadError

OFFLOAD = "offload"  # the device_map of a CPU side whose weights partly stay on disk
OFFLOAD_ENV = "HELPERS_OFFLOAD_DIR"  # where disk-offloaded weights go (default .cache/offload)

CPU_ONLY_NOTE = (
    "DEVICE_MAP=auto without an accelerator (none visible, or DEVICE=cpu): accelerate placed "
    "every module on cpu, so the map degenerates to a single device"
)
OFFLOAD_NOTE = ("DEVICE_MAP=auto: the model did not fit on the accelerators; the modules mapped "
                "to cpu run there (accelerate moves their activations), which is slow")


def single(components: dict[str, nn.Module], device: torch.device) -> dict[str, dict[str, str]]:
    """Every component whole on one device."""
    return {name: {"": str(device)} for name in components}


def plan_auto(components: dict[str, nn.Module], dtype: torch.dtype,
              kind: str) -> dict[str, dict[str, str]]:
    """Spread meta skeletons over every visible device; component -> {module: device}.

    kind is the selected device type: "cuda" or "npu" (what accelerate's integer indices
    mean), or "cpu", which keeps the plan on the host even when accelerators are visible.
    """
    from accelerate.utils import get_balanced_memory, get_max_memory, infer_auto_device_map

    whole = nn.ModuleDict(components)
    no_split = sorted({cls for m in components.values()
                       for cls in (getattr(m, "_no_split_modules", None) or [])})
    limit = {"cpu": get_max_memory()["cpu"]} if kind == "cpu" else None
    budget = get_balanced_memory(whole, max_memory=limit, no_split_module_classes=no_split,
                                 dtype=dtype)
    plan = infer_auto_device_map(whole, max_memory=budget, no_split_module_classes=no_split,
                                 dtype=dtype)
    if "disk" in plan.values():
        raise ModelLoadError(
            "DEVICE_MAP=auto: the model does not fit in the memory of the visible devices and "
            f"the host (budget {_fmt_budget(budget)}); make more devices visible or use a "
            "smaller DTYPE"
        )
    return split(plan, list(components), kind)


def plan_offload(components: dict[str, nn.Module], dtype: torch.dtype,
                 room: int) -> dict[str, dict[str, str]]:
    """A CPU side that does not fit: the decoder LM's modules on the cpu up to `room` bytes of
    weights (less the other components, kept whole there), the rest on "disk", where
    accelerate reads each from the offload folder at every forward."""
    from accelerate.utils import infer_auto_device_map

    if "lm" not in components:
        raise ModelLoadError("disk offload splits the decoder LM (component lm); this model "
                             "has none", "run the reference where it fits (REFERENCE=<run>)")
    size = torch.finfo(dtype).bits // 8
    others = sum(p.numel() * size for name, m in components.items() if name != "lm"
                 for p in m.parameters())
    lm = components["lm"]
    plan = infer_auto_device_map(lm, max_memory={"cpu": max(room - others, 0)}, dtype=dtype,
                                 no_split_module_classes=getattr(lm, "_no_split_modules", None))
    maps = single(components, torch.device("cpu"))
    maps["lm"] = {key: device_name(dev, "cpu") for key, dev in plan.items()}
    return maps


def offload_dir() -> Path:
    """The folder accelerate's disk offload writes weights to (HELPERS_OFFLOAD_DIR overrides)."""
    return Path(os.environ.get(OFFLOAD_ENV) or paths.ROOT / ".cache" / "offload")


def split(plan: dict[str, Any], names: list[str], kind: str) -> dict[str, dict[str, str]]:
    """Cut a plan over the ModuleDict of components into one map per component."""
    out: dict[str, dict[str, str]] = {name: {} for name in names}
    for key, dev in plan.items():
        for name in names:
            if key in ("", name):
                out[name][""] = device_name(dev, kind)
            elif key.startswith(name + "."):
                out[name][key[len(name) + 1:]] = device_name(dev, kind)
    return out


def device_name(dev: Any, kind: str) -> str:
    """accelerate's integer index -> "cuda:N"/"npu:N"; strings ("cpu") unchanged."""
    if isinstance(dev, int):
        return f"{kind}:{dev}"
    return str(dev)


def devices_of(maps: dict[str, dict[str, str]]) -> list[str]:
    """The distinct devices a plan uses, in first-use order."""
    seen: dict[str, None] = {}
    for m in maps.values():
        for dev in m.values():
            seen.setdefault(dev, None)
    return list(seen)


def flat(maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """Placement record: "component" or "component.module" -> device."""
    return {f"{name}.{key}" if key else name: dev for name, m in maps.items() for key, dev in m.items()}


def first_device(module: nn.Module) -> torch.device:
    """Where a component's inputs go: the device of its first parameter."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _fmt_budget(budget: dict[Any, int]) -> str:
    return ", ".join(f"{k}: {v / 2**30:.1f} GiB" for k, v in budget.items())
