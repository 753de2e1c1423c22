"""The one import of torch_npu in the project (it registers torch.npu); never raises."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class NpuImport:
    """Outcome of `import torch_npu`: the module, or why there is none."""

    module: ModuleType | None
    installed: bool
    error: str = ""


_imported: NpuImport | None = None


def import_torch_npu() -> NpuImport:
    """Import torch_npu once (it registers torch.npu); never raises.

    A broken install (ImportError, or OSError from missing CANN libraries) is reported in
    `error`, so `auto` can say why it did not pick the NPU.
    """
    global _imported
    if _imported is None:
        if importlib.util.find_spec("torch_npu") is None:
            _imported = NpuImport(None, installed=False, error="torch_npu not installed")
        else:
            try:
                module = importlib.import_module("torch_npu")
                _imported = NpuImport(module, installed=True)
            except Exception as exc:  # ImportError, OSError (CANN libs), RuntimeError (driver)
                _imported = NpuImport(
                    None, installed=True,
                    error=f"torch_npu failed to import ({type(exc).__name__}: {exc})",
                )
    return _imported
