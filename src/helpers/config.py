"""The run config: one frozen dataclass, built from notebook parameters, make variables or CLI.

Every field carries its help text; unknown keys and ill-typed values are rejected with a
message that lists what is valid, so a typo never silently falls back to a default. Stage
knobs ride in it as one immutable field (helpers.knobs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.errors import ConfigError
from helpers.grammar import DEVICE_FORMS, RUN_DTYPES, parse_device
from helpers.knobs import FALSE_WORDS, TRUE_WORDS, Knobs

PROFILES = ("auto", "tiny", "full-shape", "real")
DTYPES = ("auto", *RUN_DTYPES)
DEVICE_MAPS = ("", "auto")
# what a stage does when a CPU side (reference, golden, baseline) cannot be held in the memory
# free here (helpers.models.footprint): stop before loading it, saying so with the figures;
# load its weights with accelerate's disk offload; or hold the reference in bfloat16
REFERENCE_FITS = ("stop", "offload", "bfloat16")



def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(frozen=True)
class RunConfig:
    model: str = _opt("gpa", "model recipe: gpa, covo-audio-chat, hf (any causal LM directory), an installed helpers.recipes entry point, or path/to/recipe.py defining RECIPE")
    model_dir: str = _opt("", "directory with real weights (config.json + safetensors); implies profile real")
    profile: str = _opt("auto", "tiny (random small weights), full-shape (real dims, random weights), real (MODEL_DIR); auto = real if MODEL_DIR else tiny")
    device: str = _opt("auto", "auto, cpu, cuda, cuda:N, npu, npu:N; auto prefers npu, then cuda, then cpu")
    dtype: str = _opt("auto", "float32, bfloat16, float16; auto = float32 on an accelerator, bfloat16 on cpu (so parity still compares two precisions)")
    device_map: str = _opt("", "'' = the whole model on DEVICE; 'auto' = spread over all visible devices (accelerate)")
    stages: tuple[str, ...] = _opt((), "subset of stages to run, by name or number (empty = all)")
    extra_stages: str = _opt("", "folder of more stage notebooks NN_name.ipynb, run in number order with the built-in ones (each in its own folder)")
    out: str = _opt("report", "folder that receives one sub-folder per run")
    seed: int = _opt(0, "seed for random weights and inputs")
    strict: bool = _opt(True, "exit 1 when a check fails (0 only when every check passes; 2 for bad input or a stage that raised); STRICT=0 exits 0 on failed checks, for runs that publish known failures")
    report_lang: str = _opt("en", "language of the published report: en or zh (headings, explanations, table headers, verdict words; numbers and code stay as they are)")
    audio_dir: str = _opt("", "folder of the user's own .wav / .flac clips for the tasks stage (transcripts as <name>.txt or transcripts.tsv); '' = the shipped fixtures")
    fault: str = _opt("", "plant a known fault on the target side only (helpers.faults; make fault-matrix runs them all), to see the report FAIL a broken port; '' = none")
    baseline: str = _opt("", "a run folder (or its outputs/ folder) made elsewhere, e.g. on the GPU: stage 4 also compares this run's target with its saved target; '' = none")
    reference: str = _opt("", "where stages 4 and 6 take the CPU sides from: '' = the reference cache when it holds them for these weights, inputs and settings (else computed and cached); a run or cache folder; fresh = compute them again")
    reference_fit: str = _opt("stop", "when a CPU side cannot be held in the memory free here: stop (before loading it, with the figures and the ways out), offload (its weights read layer by layer from disk with accelerate; weights from a folder: tiny or real profile), bfloat16 (the reference in bfloat16: weaker verdicts, said in the report)")
    knobs: Knobs = _opt(Knobs(), "stage knobs, STAGE.KNOB=VALUE (stage by name or number); --list-knobs lists them")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = _TYPES[f.name]
            if expected is Knobs:
                if isinstance(value, Mapping):
                    object.__setattr__(self, f.name, Knobs.from_mapping(value))
                elif not isinstance(value, Knobs):
                    raise ConfigError(f"knobs must be a Knobs or a {{stage: {{knob: value}}}} "
                                      f"dict, got {type(value).__name__} {value!r}")
                continue
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

        # a built-in is known by name (no import); a recipe file or entry point is loaded now,
        # so a bad one fails here, before anything runs (models.get raises a ConfigError)
        recipe = None if self.model in models.BUILTIN else models.get(self.model)
        _choice("profile", self.profile, PROFILES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("device_map", self.device_map, DEVICE_MAPS)
        _choice("reference_fit", self.reference_fit, REFERENCE_FITS)
        from helpers import i18n

        i18n.check(self.report_lang)
        if self.fault:
            from helpers import faults

            faults.get(self.fault)  # an unknown name is a ConfigError listing the known ones
        if parse_device(self.device) is None:
            raise ConfigError(f"device {self.device!r} is not valid; use one of: {DEVICE_FORMS}")
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
        if recipe is not None and self.profile not in recipe.profiles:
            raise ConfigError(
                f"model {self.model} ({type(recipe).__name__}) has no profile {self.profile!r}; "
                f"its profiles: {', '.join(recipe.profiles)}",
                fix="give MODEL_DIR=/path/to/model (profile real)"
                if "real" in recipe.profiles and not self.model_dir
                else f"set PROFILE to one of {', '.join(recipe.profiles)}")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def stage_fields(cls) -> tuple[str, ...]:
        """The fields a stage notebook declares and builds its config from (the others steer
        the runner: which stages, where, knobs, exit code)."""
        runner = {"stages", "out", "strict", "extra_stages", "knobs", "report_lang", "audio_dir",
                  "fault", "baseline", "reference",
                  "reference_fit"}
        return tuple(n for n in cls.field_names() if n not in runner)

    @classmethod
    def help(cls) -> str:
        rows = [f"  {f.name.upper():<12} {f.metadata['help']} (default {f.default!r})"
                for f in dataclasses.fields(cls) if f.name != "knobs"]
        rows.append("  STAGE.KNOB   a stage knob, e.g. performance.new_tokens=32 or 4.golden=off "
                    "(stage by name or number; --list-knobs lists every stage's knobs)")
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
    def from_notebook(cls, namespace: Mapping[str, Any]) -> RunConfig:
        """Build from a stage notebook's namespace: the run parameters its parameters cell
        declares (and papermill set), by name; the notebook's other names are left alone."""
        names = (*cls.stage_fields(), "report_lang", "audio_dir", "fault", "baseline",
                 "reference", "reference_fit")
        return cls.from_params(**{n: namespace[n] for n in names if n in namespace})

    @classmethod
    def from_strings(cls, raw: dict[str, str]) -> RunConfig:
        """Build from text values (make variables, CLI flags); keys are case-insensitive.

        A key with a dot is a stage knob, STAGE.KNOB (checked against the notebooks by
        Knobs.resolve when the run starts)."""
        params: dict[str, Any] = {}
        knobs: dict[str, str] = {}
        for key, text in raw.items():
            name = key.lower().replace("-", "_")
            if "." in key:
                knobs[key] = text
                continue
            if name == "knobs":
                raise ConfigError("knobs are given one per word, as STAGE.KNOB=VALUE "
                                  "(e.g. performance.new_tokens=32), not as KNOBS=...")
            if name not in cls.field_names():
                raise ConfigError(
                    f"unknown parameter {key!r}; valid parameters:\n{cls.help()}"
                )
            params[name] = _parse(name, text)
        if knobs:
            params["knobs"] = Knobs.from_strings(knobs)
        return cls(**params)

    def to_params(self) -> dict[str, Any]:
        """Plain JSON-able values, as papermill injects them into notebooks."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["stages"] = list(self.stages)
        out["knobs"] = self.knobs.to_params()
        return out

    def recipe_args(self) -> dict[str, Any]:
        """What Recipe.load reads of the run: recipe.load(device, dtype, **cfg.recipe_args())."""
        return {"profile": self.profile, "model_dir": self.model_dir, "seed": self.seed,
                "device_map": self.device_map}

    def absolute(self) -> RunConfig:
        """This config with MODEL_DIR, a recipe file (MODEL=path.py) and EXTRA_STAGES made
        absolute: stage notebooks run in their own folder, so a path given relative to the
        caller's directory is resolved before it is handed on."""
        from helpers import models

        changes = {}
        for name in ("model_dir", "extra_stages", "audio_dir", "baseline", "reference"):
            if getattr(self, name) and getattr(self, name) != "fresh":
                changes[name] = str(Path(getattr(self, name)).expanduser().resolve())
        if models.is_path(self.model):
            changes["model"] = str(Path(self.model).expanduser().resolve())
        return dataclasses.replace(self, **changes) if changes else self


_TYPES: dict[str, type] = {
    "model": str, "model_dir": str, "profile": str, "device": str, "dtype": str,
    "device_map": str, "stages": tuple, "extra_stages": str, "out": str, "seed": int,
    "strict": bool, "report_lang": str, "audio_dir": str, "fault": str, "baseline": str, "reference": str,
    "reference_fit": str,
    "knobs": Knobs,
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
        if low in TRUE_WORDS or low in FALSE_WORDS:
            return low in TRUE_WORDS
        raise ConfigError(f"{name} must be true or false, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {text!r}") from None
    return text
