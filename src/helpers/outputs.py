"""Saved outputs, the files (helpers.saved adds the stage objects): what stages 4 (accuracy
parity) and 6 (tasks) computed on each side, kept so that another run can be compared with
this one (BASELINE=, make compare) and the CPU sides reused instead of recomputed
(REFERENCE=, the reference cache).

A run folder holds them under outputs/ (a reference cache folder holds the same layout):

  outputs/index.json                    written last, atomically: format, hashes, one entry
                                        per tensor (stage, role, key, shape, dtype, sha256)
  outputs/<stage>-<role>.safetensors    one file per stage and side, e.g.
                                        accuracy_parity-target, tasks-reference

A file is written whole (temp file, then rename) before the index that names it, so an index
that is missing, or names a file that is absent or has another sha256, is a half-written
folder: `open_run` says so, never returns part of it.

What is kept (what a comparison needs, not every tensor): stage 4's logits at every compared
position [S, V] and hidden states [L + 1, S, H] per prompt, the greedy ids [P, N] and the step
logits [N, V] (teacher-forced or the reference's own), each audio component's outputs per
fixture, the inputs of components without typed outputs; stage 6's prompt and generated ids,
step logits and waveform per task and input. A float32 tensor whose values are all exact in
bfloat16 (a bfloat16 side's outputs) is stored in bfloat16 and read back as float32: lossless.

The hashes (per stage, and for the run):
  weights   sha256 over the sha256 of every weight tensor cast to float32 on the CPU (the
            reference's copy, helpers.models.base.weight_digests): equal for any target dtype
  inputs    sha256 over the per-input hashes (`input_hashes`: prompt text, fixture file bytes,
            task clip bytes and transcript), so runs with partly different inputs can be
            compared on what they share
  settings  sha256 over the numeric settings that change outputs (dtype, sizes, new tokens,
            decoding, seed, ...), kept in full in the index
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from helpers.config import RunConfig
from helpers.errors import ConfigError

FORMAT = "adaptation-report saved outputs"
VERSION = 1
OUTPUTS = "outputs"  # the folder of a run that holds them
INDEX = "index.json"
PARITY, TASKS = "accuracy_parity", "tasks"  # the stages that save outputs


# ---- hashes ------------------------------------------------------------------------------------

def digest(value: Any) -> str:
    """sha256 of bytes, or of a JSON value written with sorted keys."""
    raw = value if isinstance(value, bytes) else json.dumps(
        value, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_hash(digests: dict[str, dict[str, str]]) -> str:
    """The weights hash from a side's weight_digests: over the float32 table (the weights as
    the float32 reference holds them, whatever the target's dtype); '' when it has none."""
    table = digests.get("float32")
    return digest(sorted(table.items())) if table else ""


@dataclass(frozen=True)
class StageHashes:
    """What one stage's outputs depend on: the weights (hash), each input (name -> hash) and
    the settings (name -> value)."""

    weights: str
    inputs: dict[str, str]
    settings: dict[str, Any]

    def as_dict(self) -> dict[str, str]:
        return {"weights": self.weights, "inputs": digest(sorted(self.inputs.items())),
                "settings": digest(self.settings)}


# ---- reading -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One saved tensor: where it comes from, its shape and dtype as the stage holds it, and the
    dtype, sha256 and size of its stored bytes."""

    stage: str
    role: str
    key: str
    file: str
    shape: tuple[int, ...]
    dtype: str
    stored: str
    sha256: str
    bytes: int


def _half_written(folder: Path, what: str) -> ConfigError:
    return ConfigError(f"{folder} is not a complete saved run: {what}",
                       "give a run folder whose stages 4 or 6 finished (its outputs/index.json "
                       "is written last), or run `make report` again to make one")


def outputs_folder(path: str | Path) -> Path:
    """A run folder's outputs/ folder, or the folder itself when it holds the index (a cache)."""
    p = Path(path).expanduser()
    return p if (p / INDEX).is_file() or p.name == OUTPUTS else p / OUTPUTS


class SavedRun:
    """A saved outputs folder, checked whole when opened (every file its index names present,
    with its sha256)."""

    def __init__(self, folder: Path, index: dict[str, Any]) -> None:
        self.folder = folder
        self.index = index
        self._entries = [Entry(**{**e, "shape": tuple(e["shape"])}) for e in index["entries"]]

    @property
    def meta(self) -> dict[str, Any]:
        """The run this came from: run id, model, profile, target, versions, time written."""
        return self.index["run"]

    @property
    def stages(self) -> list[str]:
        return list(self.index["stages"])

    def stage_hashes(self, stage: str) -> dict[str, str]:
        return self._stage(stage)["hashes"]

    def settings(self, stage: str) -> dict[str, Any]:
        return self._stage(stage)["settings"]

    @property
    def hashes(self) -> dict[str, str]:
        """weights, inputs and settings of the whole run (over every saved stage)."""
        weights = sorted({self.stage_hashes(s)["weights"] for s in self.stages} - {""})
        return {"weights": weights[0] if len(weights) == 1 else digest(weights),
                "inputs": digest(sorted(self.input_hashes.items())),
                "settings": digest({s: self.settings(s) for s in self.stages})}

    @property
    def input_hashes(self) -> dict[str, str]:
        """Every input of every saved stage: name (prompt:en:0, fixture:en_fox, clip:en_fox)
        -> sha256 of its content."""
        out: dict[str, str] = {}
        for s in self.stages:
            out.update(self._stage(s)["inputs"])
        return out

    def roles(self, stage: str) -> list[str]:
        return list(self._stage(stage)["sides"])

    def side_meta(self, stage: str, role: str) -> dict[str, Any]:
        sides = self._stage(stage)["sides"]
        if role not in sides:
            raise ConfigError(f"{self.folder} holds no {role} side for stage {stage} (it has "
                              f"{', '.join(sides) or 'none'})",
                              "give a run in which that side ran")
        return sides[role]["meta"]

    def entries(self, stage: str | None = None) -> list[Entry]:
        return [e for e in self._entries if stage is None or e.stage == stage]

    def tensor(self, stage: str, role: str, key: str) -> torch.Tensor:
        """One saved tensor, as the stage held it (dtype restored, sha256 checked)."""
        return self.tensors(stage, role)[key]

    def tensors(self, stage: str, role: str) -> dict[str, torch.Tensor]:
        """Every tensor of one side: key -> tensor, each checked against its entry."""
        from safetensors.torch import load_file

        self.side_meta(stage, role)
        wanted = {e.key: e for e in self.entries(stage) if e.role == role}
        if not wanted:
            return {}
        loaded = load_file(str(self.folder / next(iter(wanted.values())).file))
        out = {}
        for key, e in wanted.items():
            t = loaded.get(key)
            if t is None or _tensor_sha(t) != e.sha256:
                raise _half_written(self.folder, f"tensor {key} of {e.file} is missing or its "
                                    "sha256 differs from the index")
            out[key] = t.to(getattr(torch, e.dtype))
        return out

    def _stage(self, stage: str) -> dict[str, Any]:
        if stage not in self.index["stages"]:
            raise ConfigError(f"{self.folder} holds no outputs of stage {stage} (it has "
                              f"{', '.join(self.stages) or 'none'})",
                              f"give a run in which stage {stage} ran")
        return self.index["stages"][stage]

    @property
    def bytes(self) -> int:
        return sum(f["bytes"] for f in self.index["files"].values())


def open_run(path: str | Path) -> SavedRun:
    """The saved outputs of a run folder (or of a cache folder); a ConfigError naming the folder
    and the fix when there are none or they are half-written."""
    folder = outputs_folder(path)
    if not Path(path).expanduser().is_dir():
        raise ConfigError(f"{path} is not a folder", "give a run folder, e.g. report/latest")
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _half_written(folder, f"no {INDEX} (an older run, an interrupted one, or not a "
                            "run folder)") from None
    except ValueError as exc:
        raise _half_written(folder, f"{INDEX} is not JSON ({exc})") from None
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise ConfigError(f"{folder / INDEX} is not {FORMAT} version {VERSION} (format "
                          f"{index.get('format')!r}, version {index.get('version')!r})",
                          "make the run again with this version of the report")
    for name, f in index["files"].items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != f["bytes"] or file_digest(p) != f["sha256"]:
            raise _half_written(folder, f"{name} is missing or differs from its index entry")
    return SavedRun(folder, index)


# ---- writing -----------------------------------------------------------------------------------

def _tensor_sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                          ).hexdigest()


def _compact(t: torch.Tensor) -> torch.Tensor:
    """The tensor as stored: float32 values all exact in bfloat16 (a bfloat16 side's outputs)
    in bfloat16, anything else as it is; always a contiguous copy of its own."""
    t = t.detach().cpu()
    if t.dtype == torch.float32 and t.numel():
        small = t.to(torch.bfloat16)
        if torch.equal(small.to(torch.float32), t):
            return small.contiguous()
    return t.contiguous().clone()


def _atomic_write(path: Path, write: Any) -> None:
    """write(tmp_path), then rename over `path` (a reader sees the old file or the new one)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # as any other file of the run (mkstemp makes it private)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_index(folder: Path, run: dict[str, Any]) -> dict[str, Any]:
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        if index.get("format") == FORMAT and index.get("version") == VERSION:
            return index
    except (OSError, ValueError):
        pass
    return {"format": FORMAT, "version": VERSION, "run": run, "stages": {}, "entries": [],
            "files": {}}


def write_side(folder: str | Path, stage: str, role: str, tensors: dict[str, torch.Tensor],
               meta: dict[str, Any], hashes: StageHashes, run: dict[str, Any],
               reuse: dict[str, str] | None = None) -> Path:
    """Save one side of one stage into `folder` (a run's outputs/ or a cache folder): its
    tensors file first, then the index naming it (replacing that side's previous entries).
    reuse: the reference cache key's parts."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{stage}-{role}.safetensors"
    stored = {k: _compact(v) for k, v in tensors.items()}
    _atomic_write(out / name, lambda p: save_file(stored, str(p)))
    entries = [{"stage": stage, "role": role, "key": k, "file": name,
                "shape": list(tensors[k].shape), "dtype": str(tensors[k].dtype)[6:],
                "stored": str(v.dtype)[6:], "sha256": _tensor_sha(v),
                "bytes": v.numel() * v.element_size()} for k, v in stored.items()]
    side = {"file": name, "meta": meta, "written": _now()}
    file = {"sha256": file_digest(out / name), "bytes": (out / name).stat().st_size}
    _index_side(out, stage, role, (entries, side, file), hashes, run, reuse)
    return out / name


def link_side(src: Path, dst: Path, stage: str, role: str, hashes: StageHashes,
              run: dict[str, Any], reuse: dict[str, str]) -> None:
    """One saved side of folder src put into folder dst as it is: its file hard-linked (one
    copy on disk; copied across file systems), then dst's index."""
    import shutil

    index = json.loads((src / INDEX).read_text(encoding="utf-8"))
    side = index["stages"][stage]["sides"][role]
    name = side["file"]
    dst.mkdir(parents=True, exist_ok=True)
    if not ((dst / name).exists() and os.path.samefile(src / name, dst / name)):
        # (already linked by an earlier run of the stage into dst: os.replace of two links to
        # one file does nothing and would leave the temporary name behind)
        tmp = dst / f".{name}.link-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(src / name, tmp)
        except OSError:
            shutil.copy2(src / name, tmp)
        os.replace(tmp, dst / name)
    entries = [e for e in index["entries"] if (e["stage"], e["role"]) == (stage, role)]
    _index_side(dst, stage, role, (entries, side, index["files"][name]), hashes, run, reuse)


def _index_side(out: Path, stage: str, role: str, made: tuple[list[Any], dict[str, Any],
                dict[str, Any]], hashes: StageHashes, run: dict[str, Any],
                reuse: dict[str, str] | None) -> None:
    """Rewrite out's index with one side (its entries, side record and file record) in place
    of what it held for that stage and role."""
    entries, side, file = made
    index = _read_index(out, run)
    index["entries"] = [e for e in index["entries"]
                        if (e["stage"], e["role"]) != (stage, role)] + entries
    index["files"][side["file"]] = file
    info = index["stages"].setdefault(stage, {"sides": {}})
    info.update({"hashes": hashes.as_dict(), "inputs": hashes.inputs,
                 "settings": hashes.settings, "reuse": reuse or {}})
    info["sides"][role] = side
    _atomic_write(out / INDEX, lambda p: p.write_text(
        json.dumps(index, indent=1, default=str), encoding="utf-8"))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_meta(run_id: str, model: str, profile: str, target: str) -> dict[str, Any]:
    """The index's `run` block: where these outputs come from."""
    import transformers

    return {"run_id": run_id, "model": model, "profile": profile, "target": target,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "created": _now()}


# ---- one stage's outputs in a run, and where its CPU sides come from ---------------------------
#
# The reference cache: the CPU sides (reference, golden, baseline) of a stage, saved in the
# layout above under <cache>/<stage>-<key>/, where the key is the sha256 of everything they
# depend on (REUSE_PARTS). <cache> is $HELPERS_REFERENCE_CACHE, else <OUT>/.reference-cache.
# A run looks there first (REFERENCE=""), takes the sides named (REFERENCE=<run or cache
# folder>, refused naming the part that differs), or computes them again (REFERENCE=fresh);
# what it computed it writes back. Only CPU sides are ever written to it: a planted FAULT
# lives on the target alone.

CACHE_ENV = "HELPERS_REFERENCE_CACHE"
CACHE_DIR = ".reference-cache"
FRESH = "fresh"
CPU_ROLES = ("reference", "golden", "baseline")  # the sides a cache holds
REUSE_PARTS = ("weights source", "inputs", "settings", "reference side", "versions")
TARGET_ONLY = ("target_dtype",)  # settings that change the target alone: not in the cache key


def cache_root(run_dir: str | Path) -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(run_dir).resolve().parent / CACHE_DIR)


def weights_source(cfg: RunConfig) -> str:
    """What decides the weights before any is loaded: the recipe and its code, the profile and
    seed, and the files of MODEL_DIR (path, size, modification time) or the tiny cache's
    fingerprint. Stage 4 also checks the loaded weights themselves (their sha256)."""
    from helpers import models
    from helpers.models import cache

    code = {p.name: file_digest(p) for p in sorted((Path(__file__).parent / "models").glob("*.py"))}
    if models.is_path(cfg.model):
        code["recipe"] = file_digest(cfg.model)
    files = []
    if cfg.model_dir:
        root = Path(cfg.model_dir)
        files = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in sorted(root.rglob("*")) if p.is_file()]
    tiny = cache.fingerprint(models.get(cfg.model), cfg.seed) if cfg.profile == "tiny" else ""
    return digest({"model": cfg.model, "profile": cfg.profile, "seed": cfg.seed,
                   "code": code, "files": files, "tiny": tiny})


# a stage's side -> (tensors, JSON meta), and back from a saved run and a role
Pack = Callable[[Any], tuple[dict[str, torch.Tensor], dict[str, Any]]]
Unpack = Callable[[SavedRun, str], Any]


@dataclass
class Store:
    """One stage's saved outputs in a run (its outputs/ folder) and where its CPU sides come
    from: `source` when reused, else computed here and written to `cache` (None: not cached).
    pack and unpack are the stage's one conversion each way of its side objects."""

    stage: str
    pack: Pack
    unpack: Unpack
    folder: Path
    run: dict[str, Any]
    inputs: dict[str, str]
    settings: dict[str, Any]
    parts: dict[str, str]  # REUSE_PARTS -> hash: the cache key's parts
    source: SavedRun | None = None
    cache: Path | None = None
    weights: str = ""  # set from the reference's weight digests once known
    how: str = ""

    @property
    def hashes(self) -> StageHashes:
        return StageHashes(self.weights, self.inputs, self.settings)

    @property
    def note(self) -> str:
        """One sentence for the stage's text: where the CPU sides come from."""
        if self.source is not None:
            return (f"reference reused from {self.source.folder} (computed "
                    f"{self.computed('reference')}; {self.how})")
        where = f", saved to the reference cache {self.cache}" if self.cache else ""
        return f"reference computed in this run ({self.how}{where})"

    def metric(self) -> dict[str, Any]:
        return {"reused": self.source is not None, "note": self.note,
                "from": str(self.source.folder) if self.source else "",
                "key": self.parts, "cache": str(self.cache or "")}

    def reused(self, role: str) -> Any:
        """A CPU side from the reused outputs (the stage's object), None when not reused or
        not there."""
        if self.source is None or role not in self.source.roles(self.stage):
            return None
        return self.unpack(self.source, role)

    def computed(self, role: str) -> str:
        """When the reused side `role` was computed ('' when it is not reused, or the
        target)."""
        if self.source is None or role not in CPU_ROLES or role not in self.source.roles(
                self.stage):
            return ""
        return self.source.index["stages"][self.stage]["sides"][role]["written"]

    def keep(self, side: Any) -> None:
        """Write one side (the stage's object) into the run's outputs; a reused side is
        linked from where it was reused (one copy on disk)."""
        role = side.side.role
        if self.computed(role):
            link_side(self.source.folder, self.folder, self.stage, role, self.hashes, self.run,
                      self.parts)
            return
        tensors, meta = self.pack(side)
        write_side(self.folder, self.stage, role, tensors, meta, self.hashes, self.run,
                   self.parts)

    def fill_cache(self, sides: list[Any]) -> None:
        """Write the CPU sides computed here to the cache, whole or not at all; nothing when
        not cached or one of them failed (a failure is not kept). Reused from the cache, the
        sides its entry lacks (a float64 golden that did not fit in memory when it was filled)
        join that entry, so a later run reuses them too."""
        if self.cache is None or any(_failed(s) for s in sides):
            return
        if any(s.side.role not in CPU_ROLES for s in sides):
            raise ValueError("only the CPU sides are cached, never the target")
        if self.source is not None:
            self._complete_cache(sides)
            return
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.cache.parent, prefix=f".{self.cache.name}."))
        os.chmod(tmp, 0o755)
        for s in sides:  # kept in the run's outputs already: linked from there
            link_side(self.folder, tmp, self.stage, s.side.role, self.hashes, self.run,
                      self.parts)
        old = self.cache.with_name(f".{self.cache.name}.old-{os.getpid()}")
        if self.cache.exists():
            os.replace(self.cache, old)
        os.replace(tmp, self.cache)
        if old.exists():
            import shutil

            shutil.rmtree(old, ignore_errors=True)


    def _complete_cache(self, sides: list[Any]) -> None:
        if self.source is None or self.source.folder.resolve() != self.cache.resolve():
            return  # reused from a run folder (REFERENCE=...): the cache is not this one's
        have = set(self.source.roles(self.stage))
        for s in sides:
            if s.side.role not in have:
                try:  # best effort: the run's own outputs hold the side whatever happens here
                    link_side(self.folder, self.cache, self.stage, s.side.role, self.hashes,
                              self.run, self.parts)
                except OSError:
                    return  # a cache this run cannot write (read-only, full): left as it was


def _failed(side: Any) -> bool:
    return bool(getattr(side, "errors", None) or getattr(side, "error", ""))


def store(stage: str, convert: tuple[Pack, Unpack], run_dir: str | Path, cfg: RunConfig,
          inputs: dict[str, str], settings: dict[str, Any], target: str = "") -> Store:
    """The Store of one stage of a run: the cache key from the weights source, inputs and
    settings; the CPU sides found by cfg.reference ('' = the cache, 'fresh', or a run or
    cache folder, whose key must match: a ConfigError names the part that differs)."""
    import transformers

    parts = {"weights source": weights_source(cfg), "inputs": digest(sorted(inputs.items())),
             "settings": digest({k: v for k, v in settings.items() if k not in TARGET_ONLY}),
             "reference side": "cpu float32 reference",
             "versions": digest([VERSION, torch.__version__, transformers.__version__])}
    run = run_meta(Path(run_dir).name, cfg.model, cfg.profile, target)
    key = f"{stage}-{digest(parts)[:20]}"
    out = Store(stage, *convert, Path(run_dir) / OUTPUTS, run, inputs, settings, parts,
                cache=cache_root(run_dir) / key)
    reference = cfg.reference
    if reference == FRESH:
        out.how = "REFERENCE=fresh"
        return out
    if reference:
        out.source, out.cache = _matching(open_run(reference), stage, parts), None
        out.how = f"REFERENCE={reference}"
        return out
    out.how = "reference cache hit"
    try:
        out.source = _matching(open_run(out.cache), stage, parts)
    except ConfigError:  # absent, half-written or stale: a miss, computed and written again
        out.how = "no reference cached for these weights, inputs and settings"
    return out


def _matching(saved: SavedRun, stage: str, parts: dict[str, str]) -> SavedRun:
    """`saved` when its stage's CPU sides were made from the same parts; else a ConfigError
    naming each part that differs."""
    have = saved.index["stages"].get(stage, {}).get("reuse")
    if not have or "reference" not in saved.roles(stage):
        raise ConfigError(f"{saved.folder} holds no reference side of stage {stage}",
                          "give a run folder in which that stage ran, or a reference cache "
                          "folder")
    differ = [f"{p} ({str(have.get(p))[:12]} there, {parts[p][:12]} here)"
              for p in REUSE_PARTS if have.get(p) != parts[p]]
    if differ:
        raise ConfigError(f"the reference in {saved.folder} was made from other "
                          f"{'; '.join(differ)}",
                          "give one made with the same weights, inputs and settings, or "
                          "REFERENCE=fresh to compute it again")
    return saved
