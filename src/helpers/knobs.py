"""Stage knobs: what a stage notebook's parameters cell declares, and the values a run gives.

Knobs (`STAGE.KNOB=VALUE`, e.g. `performance.new_tokens=32`) ride in the frozen run config as
an immutable `Knobs` field: the runner hands one config to every stage, and each stage's
notebook gets only its own knobs. Which knobs exist, and their types, the stage notebooks say
(their `parameters` cell, after the run parameters): `Knobs.resolve` checks them against the
discovered stages before a run folder is made.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from helpers.errors import ConfigError

T = TypeVar("T")

# ---- stage knobs --------------------------------------------------------------------------

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("", "0", "false", "no", "off")
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
        if low in TRUE_WORDS or low in FALSE_WORDS:
            return low in TRUE_WORDS
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


def notebook_knobs(path: str | Path, run_parameters: Collection[str]) -> dict[str, KnobSpec]:
    """The knobs a stage notebook declares: its parameters that are neither run parameters
    (`run_parameters`, the RunConfig fields) nor set by the runner (run_dir), in the order of
    its parameters cell."""
    declared = declared_parameters(path)
    skip = set(run_parameters) | set(RUNNER_PARAMETERS)
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


def _knob_for(name: str, stage: Any, where: str, run_parameters: Collection[str]) -> KnobSpec:
    declared = stage.knobs()
    if name in declared:
        return declared[name]
    folded = [k for k in declared if k.lower() == name.lower()]
    if len(folded) == 1:
        return declared[folded[0]]
    if name.lower() in run_parameters:
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

    def resolve(self, stages: list[Any], selected: list[Any] | None = None,
                run_parameters: Collection[str] = ()) -> Knobs:
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
            spec = _knob_for(knob, stage, given, run_parameters)
            where = f"{stage.name}.{spec.name}"
            typed = (spec.parse(value, where) if isinstance(value, _Text)
                     else spec.check(value, where))
            if (stage.name, spec.name) in found:
                raise ConfigError(f"knob {where} is given twice ({found[stage.name, spec.name][3]}"
                                  f" and {given})", fix="give it once")
            found[stage.name, spec.name] = (stage.number, i, typed, given)
        ordered = sorted(found.items(), key=lambda kv: kv[1][:2])
        return Knobs(tuple((s, k, v[2]) for (s, k), v in ordered))


# ---- a stage's settings: one dataclass per stage, the notebook's parameters cell mirrors it ----


def setting(default: Any, help: str) -> Any:
    """A field of a stage's Settings dataclass: its default and its help text."""
    return field(default=default, metadata={"help": help})


def from_namespace(cls: type[T], namespace: Mapping[str, Any]) -> T:
    """The stage's Settings from a notebook's namespace (its parameters cell, after papermill
    injected the run's values): each field's value by name, lists as tuples."""
    values = {f.name: _freeze(namespace[f.name]) for f in fields(cls) if f.name in namespace}
    return cls(**values)
