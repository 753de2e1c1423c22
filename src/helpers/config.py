"""The run config: one frozen dataclass, built from notebook parameters, make variables or CLI.

Every field carries its help text; unknown keys and ill-typed values are rejected with a
message that lists what is valid, so a typo never silently falls back to a default.

Stage knobs (`STAGE.KNOB=VALUE`, e.g. `performance.new_tokens=32`) ride in the same frozen
config as an immutable `Knobs` field: the runner hands one config to every stage, and each
stage's notebook gets only its own knobs. Which knobs exist, and their types, only the stage
notebooks know (their `parameters` cell, after the run parameters): `Knobs.resolve` checks them
against the discovered stages before a run folder is made.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from helpers.errors import ConfigError

PROFILES = ("auto", "tiny", "full-shape", "real")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_MAPS = ("", "auto")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|npu)(:\d+)?$")



def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help}, **kw)


# ---- stage knobs --------------------------------------------------------------------------

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
KNOB_KINDS = ("bool", "int", "float", "str", "list[int]", "list[float]", "list[str]")
_KIND_WORDS = {
    "bool": "true or false (also 1/0, yes/no, on/off)", "int": "an integer", "float": "a number",
    "str": "text", "list[int]": "a comma-separated list of integers",
    "list[float]": "a comma-separated list of numbers", "list[str]": "a comma-separated list",
}
RUNNER_PARAMETERS = ("run_dir",)  # declared by every stage, set by the runner: never a knob


class _Text(str):
    """A knob value as written on the command line or to make: parsed to the knob's type."""


def _scalar(kind: str, text: str) -> Any:
    """Text to one value of `kind` (bool, int, float, str); ValueError when it is not one."""
    if kind == "bool":
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ValueError(text)
    if kind == "int":
        return int(text.strip())
    if kind == "float":
        return float(text.strip())
    return text


def _kind_of(value: Any) -> str:
    """The knob kind of a notebook default; '' when it is none of KNOB_KINDS."""
    if isinstance(value, bool):
        return "bool"
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind.__name__
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return "list[str]"  # an empty default list too: its items are taken as text
        if any(isinstance(v, bool) for v in value):
            return ""
        if all(isinstance(v, int) for v in value):
            return "list[int]"
        if all(isinstance(v, (int, float)) for v in value):
            return "list[float]"
    return ""


@dataclass(frozen=True)
class KnobSpec:
    """One knob as a stage notebook's parameters cell declares it (name = default  # help).

    The kind comes from an annotation when it names one of KNOB_KINDS (`x: float = 0`), else
    from the default's type; a default of another type (None, a dict) makes a knob that cannot
    be set from make or the command line (kind '').
    """

    name: str
    kind: str
    default: Any
    default_text: str
    help: str = ""

    @classmethod
    def from_declared(cls, entry: Mapping[str, Any]) -> KnobSpec:
        """From one entry of papermill.inspect_notebook (name, inferred_type_name, default, help)."""
        text = str(entry.get("default") or "")
        try:
            default = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            default = None
            kind = ""
        else:
            kind = _kind_of(default)
        annotation = str(entry.get("inferred_type_name") or "").replace(" ", "")
        annotation = annotation.replace("List[", "list[")
        if annotation in KNOB_KINDS:
            kind = annotation
        return cls(str(entry["name"]), kind, default, text, str(entry.get("help") or ""))

    def row(self) -> str:
        """`new_tokens = 128 (int)  # help`, as listings and error messages show a knob."""
        out = f"{self.name} = {self.default_text} ({self.kind or 'not settable'})"
        return f"{out}  # {self.help}" if self.help else out

    def _unsettable(self, where: str) -> ConfigError:
        return ConfigError(
            f"knob {where} cannot be set: its default {self.default_text} is not a bool, int, "
            "float, str or a list of int, float or str",
            fix="give it such a default (or an annotation, e.g. `x: float = 0`) in the "
                "notebook's parameters cell")

    def _wrong(self, where: str, got: str) -> ConfigError:
        return ConfigError(f"knob {where} must be {_KIND_WORDS[self.kind]} "
                           f"(default {self.default_text}), got {got}")

    def parse(self, text: str, where: str) -> Any:
        """Text from make / the CLI to this knob's type (lists comma-separated, like STAGES)."""
        if not self.kind:
            raise self._unsettable(where)
        try:
            if self.kind.startswith("list["):
                parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
                return tuple(_scalar(self.kind[5:-1], p) for p in parts)
            return _scalar(self.kind, str(text))
        except ValueError:
            raise self._wrong(where, repr(str(text))) from None

    def check(self, value: Any, where: str) -> Any:
        """A typed value (from_params, a dict) checked against this knob's type."""
        if not self.kind:
            raise self._unsettable(where)
        if self.kind.startswith("list["):
            if isinstance(value, (list, tuple)):
                try:
                    return tuple(_typed(self.kind[5:-1], v) for v in value)
                except TypeError:
                    pass
        else:
            try:
                return _typed(self.kind, value)
            except TypeError:
                pass
        raise self._wrong(where, f"{type(value).__name__} {value!r}")


def _typed(kind: str, value: Any) -> Any:
    """A typed value as `kind` (an int is fine for a float); TypeError when it is not one."""
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind in ("int", "float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value) if kind == "float" else value
    if kind == "float" and isinstance(value, float):
        return value
    if kind == "str" and isinstance(value, str):
        return str(value)
    raise TypeError(kind)


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _thaw(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@lru_cache(maxsize=64)
def _declared(path: str, mtime_ns: int, size: int) -> dict[str, dict[str, Any]]:
    import nbformat
    from papermill.translators import papermill_translators

    nb = nbformat.read(path, as_version=4)
    cell = next((c for c in nb.cells
                 if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        return {}
    spec = nb.metadata.get("kernelspec", {})
    language = spec.get("language") or nb.metadata.get("language_info", {}).get("name")
    translator = papermill_translators.find_translator(spec.get("name") or "python3",
                                                       language or "python")
    return {p.name: p._asdict() for p in translator.inspect(cell)}


def declared_parameters(path: str | Path) -> dict[str, dict[str, Any]]:
    """What papermill.inspect_notebook reports (name -> name, inferred_type_name, default,
    help), also for a notebook without kernelspec metadata: the runner executes every stage
    with python3, so that is what its parameters cell is read as. Cached per file version."""
    p = Path(path)
    try:
        st = p.stat()
        return _declared(str(p), st.st_mtime_ns, st.st_size)
    except Exception as exc:  # missing, not JSON, not a notebook: several kinds are raised
        raise ConfigError(f"cannot read the parameters cell of {p}: {type(exc).__name__}: {exc}",
                          fix="it must be a notebook with a cell tagged `parameters`") from exc


def notebook_knobs(path: str | Path) -> dict[str, KnobSpec]:
    """The knobs a stage notebook declares: its parameters that are neither run parameters
    (RunConfig fields) nor set by the runner (run_dir), in the order of its parameters cell."""
    declared = declared_parameters(path)
    skip = set(RunConfig.field_names()) | set(RUNNER_PARAMETERS)
    return {name: KnobSpec.from_declared(entry) for name, entry in declared.items()
            if name not in skip}


def _stage_for(key: str, stages: Iterable[Any], where: str) -> Any:
    low = key.strip().lower()
    for s in stages:
        if low == s.name or (low.isdigit() and int(low) == s.number):
            return s
    valid = ", ".join(f"{s.number} {s.name}" for s in stages)
    raise ConfigError(f"unknown stage {key!r} in knob {where}; stages: {valid}",
                      fix="name the stage by name or number, e.g. performance.new_tokens=32 "
                          "or 5.new_tokens=32")


def _knob_for(name: str, stage: Any, where: str) -> KnobSpec:
    declared = stage.knobs()
    if name in declared:
        return declared[name]
    folded = [k for k in declared if k.lower() == name.lower()]
    if len(folded) == 1:
        return declared[folded[0]]
    if name.lower() in RunConfig.field_names():
        raise ConfigError(f"{name} is a run parameter, not a knob of stage {stage.name}",
                          fix=f"set {name.upper()}=... instead (it reaches every stage)")
    if name.lower() in RUNNER_PARAMETERS:
        raise ConfigError(f"{name} is set by the runner for every stage, it is not a knob",
                          fix=f"drop {where}")
    if not declared:
        raise ConfigError(
            f"stage {stage.number} {stage.name} has no knob {name!r}: it has no knobs (the "
            f"parameters cell of {stage.path} declares only run parameters)",
            fix=f"drop {where}, or declare the knob in that cell after the run parameters, "
                f"{_ONE_A_LINE}")
    rows = "\n".join(f"  {k.row()}" for k in declared.values())
    raise ConfigError(f"stage {stage.number} {stage.name} has no knob {name!r}; its knobs "
                      f"(set as {stage.name}.KNOB=VALUE):\n{rows}",
                      fix=f"a knob missing here is not declared in {stage.path.name}: "
                          f"{_ONE_A_LINE}")


_ONE_A_LINE = ("one `name = default  # help` a line (papermill skips a line with a second `=`, "
               "even in its comment)")


@dataclass(frozen=True)
class Knobs:
    """Stage knobs, immutable: (stage, knob, value) triples (list values kept as tuples).

    As given (`Knobs.from_strings({"5.new_tokens": "32"})`, `Knobs.from_mapping(...)`) the
    stage may be a number or a name in any case and text values are still text; `resolve`
    checks each against the stage notebooks and returns canonical names and typed values.
    """

    entries: tuple[tuple[str, str, Any], ...] = ()

    def __post_init__(self) -> None:
        fixed = []
        for entry in self.entries:
            if (not isinstance(entry, tuple) or len(entry) != 3
                    or not all(isinstance(x, str) and x.strip() for x in entry[:2])):
                raise ConfigError(f"a knob must be (stage, knob, value), got {entry!r}")
            value = _freeze(entry[2])
            items = value if isinstance(value, tuple) else (value,)
            if not all(isinstance(v, (bool, int, float, str)) for v in items):
                raise ConfigError(
                    f"knob {entry[0]}.{entry[1]} must be a bool, int, float, str or a list of "
                    f"those, got {type(entry[2]).__name__} {entry[2]!r}")
            fixed.append((entry[0], entry[1], value))
        object.__setattr__(self, "entries", tuple(fixed))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> Knobs:
        """From {stage: {knob: value}} (typed values), as run.json records them."""
        entries = []
        for stage, knobs in mapping.items():
            if not isinstance(stage, str) or not isinstance(knobs, Mapping):
                raise ConfigError(f"knobs must map a stage to {{knob: value}}, got "
                                  f"{stage!r}: {knobs!r}",
                                  fix='e.g. {"performance": {"new_tokens": 32}}')
            entries.extend((stage, str(k), v) for k, v in knobs.items())
        return cls(tuple(entries))

    @classmethod
    def from_strings(cls, raw: Mapping[str, str]) -> Knobs:
        """From {"STAGE.KNOB": "text"} (make variables, CLI words)."""
        entries = []
        for key, text in raw.items():
            stage, _, knob = key.partition(".")
            if not stage.strip() or not knob.isidentifier():
                raise ConfigError(f"{key!r} is not a stage knob; expected STAGE.KNOB=VALUE, "
                                  "e.g. performance.new_tokens=32 or 4.golden=off")
            entries.append((stage.strip(), knob, _Text(text)))
        return cls(tuple(entries))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def stage(self, name: str) -> dict[str, Any]:
        """One stage's knobs as papermill parameters (lists as lists)."""
        return {k: _thaw(v) for s, k, v in self.entries if s == name}

    def to_params(self) -> dict[str, dict[str, Any]]:
        """{stage: {knob: value}}, plain JSON values (run.json)."""
        out: dict[str, dict[str, Any]] = {}
        for s, k, v in self.entries:
            out.setdefault(s, {})[k] = _thaw(v)
        return out

    def resolve(self, stages: list[Any], selected: list[Any] | None = None) -> Knobs:
        """Check every knob against the stages (StageSpec: number, name, path, knobs()):
        the stage exists and runs (is in `selected`), declares the knob, and the value has
        the knob's type. Returns canonical stage and knob names, typed values, stage order."""
        chosen = selected if selected is not None else stages
        found: dict[tuple[str, str], tuple[int, int, Any, str]] = {}
        for i, (key, knob, value) in enumerate(self.entries):
            given = f"{key}.{knob}"
            stage = _stage_for(key, stages, given)
            if stage.name not in {s.name for s in chosen}:
                runs = ", ".join(f"{s.number} {s.name}" for s in chosen)
                raise ConfigError(
                    f"knob {given} is for stage {stage.number} {stage.name}, which STAGES "
                    f"leaves out (this run: {runs})",
                    fix=f"add {stage.name} to STAGES, or drop {given}")
            spec = _knob_for(knob, stage, given)
            where = f"{stage.name}.{spec.name}"
            typed = (spec.parse(value, where) if isinstance(value, _Text)
                     else spec.check(value, where))
            if (stage.name, spec.name) in found:
                raise ConfigError(f"knob {where} is given twice ({found[stage.name, spec.name][3]}"
                                  f" and {given})", fix="give it once")
            found[stage.name, spec.name] = (stage.number, i, typed, given)
        ordered = sorted(found.items(), key=lambda kv: kv[1][:2])
        return Knobs(tuple((s, k, v[2]) for (s, k), v in ordered))



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
        from helpers import i18n

        i18n.check(self.report_lang)
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
        runner = {"stages", "out", "strict", "extra_stages", "knobs", "report_lang", "audio_dir"}
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

    def absolute(self) -> RunConfig:
        """This config with MODEL_DIR, a recipe file (MODEL=path.py) and EXTRA_STAGES made
        absolute: stage notebooks run in their own folder, so a path given relative to the
        caller's directory is resolved before it is handed on."""
        from helpers import models

        changes = {}
        for name in ("model_dir", "extra_stages", "audio_dir"):
            if getattr(self, name):
                changes[name] = str(Path(getattr(self, name)).expanduser().resolve())
        if models.is_path(self.model):
            changes["model"] = str(Path(self.model).expanduser().resolve())
        return dataclasses.replace(self, **changes) if changes else self


_TYPES: dict[str, type] = {
    "model": str, "model_dir": str, "profile": str, "device": str, "dtype": str,
    "device_map": str, "stages": tuple, "extra_stages": str, "out": str, "seed": int,
    "strict": bool, "report_lang": str, "audio_dir": str, "knobs": Knobs,
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
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ConfigError(f"{name} must be true or false, got {text!r}")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {text!r}") from None
    return text
