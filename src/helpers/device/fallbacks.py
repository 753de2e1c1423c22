"""Operators that torch_npu runs on the CPU instead of the NPU, read from its warnings."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# "The operator 'aten::X' is not currently supported on the NPU backend and will fall back to
# run on the CPU" (torch_npu npu_cpu_fallback; the MPS fallback says the same with "MPS").
_FALLBACK_RE = re.compile(
    r"operator\s+[`'\"](?P<op>[^`'\"\s]+)[`'\"]\s+is\s+not\s+(?:currently\s+)?"
    r"(?:supported|implemented)\s+(?:on|for)\s+the\s+(?P<backend>\w+)\s+(?:backend|device)"
    r"[\s,]+(?:and\s+)?(?:will\s+)?falls?\s*back",
    re.IGNORECASE,
)


def parse_fallbacks(text: str) -> list[str]:
    """Operator names (e.g. 'aten::isin.Tensor_Tensor') in fallback warnings, unique, in order."""
    return list(dict.fromkeys(m.group("op") for m in _FALLBACK_RE.finditer(text)))


@dataclass
class FallbackCapture:
    """What capture_fallbacks saw: the captured stderr text and the operators that fell back."""

    text: str = ""
    operators: list[str] = field(default_factory=list)


@contextmanager
def capture_fallbacks() -> Iterator[FallbackCapture]:
    """Capture fd 2 (C++ stderr) and Python warnings for the block; parse fallback operators.

    torch_npu prints the fallback warning from C++ once per operator; depending on the call
    path it reaches fd 2 directly or becomes a Python UserWarning, so both are captured. After
    the block everything captured is written again to the real stderr / warnings, so nothing
    is hidden from the user; fb.text and fb.operators are filled in then.
    """
    fb = FallbackCapture()
    sys.stderr.flush()
    saved_fd = os.dup(2)
    sink = tempfile.TemporaryFile()
    os.dup2(sink.fileno(), 2)
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield fb
    finally:
        try:
            sys.stderr.flush()  # Python-level text written inside the block lands in the sink
        except Exception:
            pass
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        sink.seek(0)
        fd_text = sink.read().decode("utf-8", errors="replace")
        sink.close()
        if fd_text:
            os.write(2, fd_text.encode("utf-8"))
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        warned = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
        fb.text = fd_text + warned
        fb.operators = parse_fallbacks(fb.text)


# Settings that can keep torch_npu's fallback warnings from being printed at all, so the list
# read from them may be incomplete: torch_npu's own switches (TORCH_NPU_DISABLED_WARNING in
# torch_npu 2.9.0.post1, TORCH_NPU_WARNING_DISABLE in newer releases), warnings printed only
# on rank 0 in distributed runs, and c10's log level above WARNING.
_HIDING = {
    "TORCH_NPU_DISABLED_WARNING": lambda v: v.strip().lower() not in ("", "0", "false", "off"),
    "TORCH_NPU_WARNING_DISABLE": lambda v: v.strip().lower() not in ("", "0", "false", "off"),
    "RANK": lambda v: v.strip() not in ("", "0"),
    "TORCH_CPP_LOG_LEVEL": lambda v: v.strip().upper() in ("ERROR", "FATAL", "3", "2"),
}


def hiding_settings(environ: dict[str, str] | None = None) -> list[str]:
    """The environment settings here that can hide fallback warnings, as NAME=value."""
    env = os.environ if environ is None else environ
    return [f"{k}={env[k]}" for k, hides in _HIDING.items() if k in env and hides(env[k])]
