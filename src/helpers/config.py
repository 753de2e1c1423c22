"""The run config: one frozen dataclass, built from notebook parameters, make variables or CLI.

Every field carries its help text; unknown keys and ill-typed values are rejected with a
message that lists what is valid, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

PROFILES = ("auto", "tiny", "full-shape", "real")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_MAPS = ("", "auto")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|npu)(:\d+)?$")


class ConfigError(ValueError):
    """A run parameter is unknown, ill-typed or inconsistent; the message says how to fix it."""


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(frozen=True)
class RunConfig:
    model: str = _opt("gpa", "model recipe: gpa, covo-audio-chat, or hf (any causal LM directory)")
    model_dir: str = _opt("", "directory with real weights (config.json + safetensors); implies profile real")
    profile: str = _opt("auto", "tiny (random small weights), full-shape (real dims, random weights), real (MODEL_DIR); auto = real if MODEL_DIR else tiny")
    device: str = _opt("auto", "auto, cpu, cuda, cuda:N, npu, npu:N; auto prefers npu, then cuda, then cpu")
    dtype: str = _opt("auto", "float32, bfloat16, float16; auto = float32 on an accelerator, bfloat16 on cpu (so parity still compares two precisions)")
    device_map: str = _opt("", "'' = the whole model on DEVICE; 'auto' = spread over all visible devices (accelerate)")
    stages: tuple[str, ...] = _opt((), "subset of stages to run, by name or number (empty = all)")
    out: str = _opt("report", "folder that receives one sub-folder per run")
    seed: int = _opt(0, "seed for random weights and inputs")
    strict: bool = _opt(False, "exit non-zero when any check fails, not only when a stage raises")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = _TYPES[f.name]
            if expected is tuple:
                if isinstance(value, list):
                    object.__setattr__(self, f.name, tuple(value))
                    value = tuple(value)
                if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"{f.name} must be a list of strings, got {value!r}")
            elif expected is int and isinstance(value, bool) or not isinstance(value, expected):
                raise ConfigError(
                    f"{f.name} must be {expected.__name__}, got {type(value).__name__} {value!r} "
                    f"({f.metadata['help']})"
                )
        from helpers import models

        if self.model not in models.names():
            raise ConfigError(f"unknown model {self.model!r}; known recipes: {', '.join(models.names())}")
        _choice("profile", self.profile, PROFILES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("device_map", self.device_map, DEVICE_MAPS)
        if not _DEVICE_RE.match(self.device):
            raise ConfigError(
                f"device {self.device!r} is not valid; use auto, cpu, cuda, cuda:N, npu or npu:N"
            )
        if self.profile == "auto":
            object.__setattr__(self, "profile", "real" if self.model_dir else "tiny")
        if self.profile == "real" and not self.model_dir:
            raise ConfigError("profile real reads weights from MODEL_DIR: set model_dir=/path/to/model")
        if self.model_dir and self.profile != "real":
            raise ConfigError(
                f"model_dir is only read with profile real (got profile {self.profile!r}): "
                "drop PROFILE or set PROFILE=real"
            )
        if self.model == "hf" and self.profile != "real":
            raise ConfigError("model hf has no built-in shapes: give MODEL_DIR with a causal LM")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def help(cls) -> str:
        rows = [f"  {f.name.upper():<11} {f.metadata['help']} (default {f.default!r})"
                for f in dataclasses.fields(cls)]
        return "\n".join(rows)

    @classmethod
    def from_params(cls, **params: Any) -> RunConfig:
        """Build from typed values (notebook parameters); unknown keys are an error."""
        unknown = sorted(set(params) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {', '.join(unknown)}; valid parameters:\n{cls.help()}"
            )
        return cls(**params)

    @classmethod
    def from_strings(cls, raw: dict[str, str]) -> RunConfig:
        """Build from text values (make variables, CLI flags); keys are case-insensitive."""
        params: dict[str, Any] = {}
        for key, text in raw.items():
            name = key.lower().replace("-", "_")
            if name not in cls.field_names():
                raise ConfigError(
                    f"unknown parameter {key!r}; valid parameters:\n{cls.help()}"
                )
            params[name] = _parse(name, text)
        return cls(**params)

    def to_params(self) -> dict[str, Any]:
        """Plain JSON-able values, as papermill injects them into notebooks."""
        out = dataclasses.asdict(self)
        out["stages"] = list(self.stages)
        return out


_TYPES: dict[str, type] = {
    "model": str, "model_dir": str, "profile": str, "device": str, "dtype": str,
    "device_map": str, "stages": tuple, "out": str, "seed": int, "strict": bool,
}


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        shown = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{name} {value!r} is not valid; choose one of {shown}")


def _parse(name: str, text: str) -> Any:
    kind = _TYPES[name]
    text = text.strip()
    if kind is tuple:
        return tuple(s.strip() for s in text.replace(" ", ",").split(",") if s.strip())
    if kind is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("", "0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {text!r}") from None
    return text
