"""How a run names devices and dtypes: the one DEVICE grammar and the one dtype table.

Torch-free, so the run config checks DEVICE and DTYPE before torch is imported; helpers.device
turns these names into torch objects.
"""

from __future__ import annotations

import re

BACKENDS = ("cpu", "cuda", "npu")
DEVICE_FORMS = "auto, cpu, cuda, cuda:N, npu, npu:N (N = device index, e.g. npu:0)"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|npu)(?::(\d+))?$")

# name -> bytes per element: every dtype the project runs, probes or sizes
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8,
                               "int64": 8, "int32": 4}
RUN_DTYPES = ("float32", "bfloat16", "float16")  # what DTYPE may name (besides auto)


def parse_device(text: str) -> tuple[str, int | None] | None:
    """'npu:1' -> ('npu', 1), 'auto' -> ('auto', None); None when it is not a DEVICE value."""
    match = _DEVICE_RE.match(str(text).strip().lower())
    if not match:
        return None
    return match.group(1), int(match.group(2)) if match.group(2) is not None else None
