"""Recipe base and LoadedModel: what every model family shares.

A recipe knows a model family's components (e.g. "lm"; or "audio_encoder", "adapter", "lm"),
their configs at each profile, the class that builds or reads each one, how they assemble into
the end-to-end module, and sample inputs for each. Profiles:

  tiny        same classes, small dims, random weights from a fixed seed; saved once with
              save_pretrained into a cache folder, then always read back with from_pretrained
              (the path real weights take)
  full-shape  the real dimensions with random weights, made on the CPU in float32 under the
              seed and then cast and placed (real sizes and speeds, no checkpoint needed; the
              same numbers on every device and in every dtype)
  real        weights from MODEL_DIR

Every random-weight module is made the same way (weights.materialize): a skeleton on the meta
device, float32 storage on the CPU, the model's own weight init under a fixed seed, then each
tensor cast to its dtype and moved where the placement says.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from helpers import compat, paths
from helpers.device import Backend, dtype_name
from helpers.grammar import DTYPE_BYTES, RUN_DTYPES
from helpers.models import cache, placement, weights
from helpers.models.weights import ModelLoadError

PROFILES = ("tiny", "full-shape", "real")
FULL_SHAPE_NOTE = ("full-shape: random weights made on the CPU in float32 under the seed, then "
                   "cast and moved (weights.materialize), so every device and dtype holds the "
                   "same numbers; nothing is read, so config_init_s is the whole load")
TOKENIZER_DIR = paths.TOKENIZER
PROMPTS_FILE = paths.DATA / "prompts.json"


@dataclass(frozen=True)
class Component:
    """One part of a model family; its files live in `subfolder` of a model directory."""

    name: str
    role: str
    subfolder: str = ""


@dataclass(frozen=True)
class Reference:
    """A published full-shape figure, with the tolerance its rounding implies and its source.

    key: "total", a component name, or "<component>.input_embeddings" / ".output_embeddings".
    """

    key: str
    value: float
    tolerance: float
    label: str
    source: str


@lru_cache(maxsize=1)
def _shipped_tokenizer() -> Any:
    return compat.load_tokenizer(TOKENIZER_DIR)


def shipped_tokenizer() -> Any:
    """The tiny byte-level BPE in data/tokenizer (see scripts/build_tokenizer.py): a fresh copy
    each call, so a recipe that adds its markers (gpa, covo) never changes another's."""
    import copy

    return copy.deepcopy(_shipped_tokenizer())


def prompts() -> dict[str, list[str]]:
    """data/prompts.json: {"en": [...], "zh": [...]}."""
    return json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))


def count(module: nn.Module) -> int:
    """Parameters of a module, each shared (tied) tensor once."""
    return sum(p.numel() for p in module.parameters())


def count_unique(modules: list[nn.Module]) -> int:
    """Parameters of several modules together, a tensor shared between them once."""
    seen: dict[int, int] = {}
    for m in modules:
        for p in m.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


def human(n: float) -> str:
    """312625152 -> '312.6M', 8402029312 -> '8.40B'."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(int(n))


def text_inputs(tokenizer: Any, batch: int, device: torch.device,
                text: str | None = None) -> dict[str, torch.Tensor]:
    """The first English prompt (or `text`), repeated `batch` times: no padding, no masked rows."""
    enc = tokenizer([text or prompts()["en"][0]] * batch, return_tensors="pt")
    return {"input_ids": enc["input_ids"].to(device),  # [B, S]
            "attention_mask": enc["attention_mask"].to(device)}  # [B, S]


@dataclass(frozen=True)
class GraphTarget:
    """The graph-mode speed-up a recipe is held to on one backend: graph mode's tokens/s at
    least `ratio` times eager's, `source` saying whose target it is."""

    backend: str
    ratio: float
    source: str


class Recipe:
    """Base class; a recipe module exposes RECIPE = SomeRecipe().

    What a recipe can do is declared here (audio_parts, task_family, graph_target): stages ask
    the recipe, never its name, so a subclass with another name behaves like its parent.
    """

    name: str = ""
    # the audio components it carries (names in helpers.models.audio_components.PARTS)
    audio_parts: tuple[str, ...] = ()
    # the speech tasks the tasks stage runs for it (helpers.tasks.<family>); "" = none
    task_family: str = ""
    graph_target: GraphTarget | None = None  # None: graph mode's speed-up is informational
    # whether a CPU side can read its weights with accelerate's disk offload (REFERENCE_FIT=
    # offload): from_pretrained with an offload folder, in _load_dir
    disk_offload: bool = True
    title: str = ""
    components: tuple[Component, ...] = ()
    profiles: tuple[str, ...] = PROFILES
    references: tuple[Reference, ...] = ()
    entry: str = "lm"  # name of the end-to-end module for example_inputs
    # components with built-in shapes that a model directory may lack (a release keeps them in
    # its own formats): read only where their folder holds a save of the recipe's class
    builtin_only: tuple[str, ...] = ()
    layout: str = ""  # the MODEL_DIR layout the real profile reads
    # the config.json model_type values of MODEL_DIR this recipe implements ("" = any causal LM)
    model_types: tuple[str, ...] = ()

    # ---- what a recipe defines ------------------------------------------------------------
    def configs(self, profile: str) -> dict[str, Any]:
        """Built-in configs per component for the tiny and full-shape profiles."""
        raise ModelLoadError(f"{self.name} has no built-in shapes: give MODEL_DIR (profile real)")

    def read_configs(self, root: Path) -> dict[str, Any]:
        """Configs per component, read from a model directory."""
        raise NotImplementedError

    def loader(self, component: str) -> Any:
        """The class whose from_pretrained / _from_config makes this component."""
        raise NotImplementedError

    def read_kwargs(self, component: str) -> dict[str, Any]:
        """Extra from_pretrained keyword arguments for this component."""
        return {}

    def read_tokenizer(self, root: Path) -> Any:
        try:
            return compat.load_tokenizer(root, trust_remote_code=True)
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(
                f"{self.name}: no usable tokenizer in {root} ({type(exc).__name__}: {exc}); "
                "expected tokenizer.json + tokenizer_config.json (or the model's own tokenizer files)"
            ) from exc

    def assemble(self, modules: dict[str, nn.Module], tokenizer: Any) -> nn.Module:
        """The end-to-end module; a plain causal LM by default."""
        return modules["lm"]

    def example_inputs(self, loaded: LoadedModel, component: str,
                       batch: int) -> dict[str, torch.Tensor]:
        if component != "lm":
            raise KeyError(f"{self.name} has no component {component!r}; known: {loaded.input_names()}")
        return text_inputs(loaded.tokenizer, batch, loaded.input_device("lm"))

    # ---- shapes -------------------------------------------------------------------------
    def component_names(self) -> list[str]:
        return [c.name for c in self.components]

    def saved_here(self, root: Path, name: str) -> bool:
        """Whether a built-in-only component's folder in `root` holds a save of its class."""
        return False

    def dir_components(self, root: Path) -> list[str]:
        """The components read from a model directory (see builtin_only)."""
        return [n for n in self.component_names()
                if n not in self.builtin_only or self.saved_here(root, n)]

    def component_dir(self, root: Path, name: str) -> Path:
        sub = next(c.subfolder for c in self.components if c.name == name)
        return root / sub if sub else root

    def check_profile(self, profile: str) -> str:
        if profile not in self.profiles:
            raise ModelLoadError(
                f"{self.name} has no profile {profile!r}; its profiles: {', '.join(self.profiles)}"
            )
        return profile

    def shape_configs(self, profile: str, model_dir: str | Path = "",
                      check_weights: bool = False) -> dict[str, Any]:
        """Configs per component: built in (tiny, full-shape) or read from model_dir (real).

        For real, every component folder is checked first (config.json; with check_weights
        also that each weight file is present and complete).
        """
        self.check_profile(profile)
        if profile != "real":
            return self.configs(profile)
        root = self.release_root(model_dir)
        for name in self.dir_components(root):
            weights.check_dir(self.component_dir(root, name), f"{self.name} {name}",
                              check_weights=check_weights, layout=self.layout)
        try:
            return self.read_configs(root)
        except Exception as exc:  # transformers' config validation raises several kinds
            raise ModelLoadError(
                f"{self.name}: cannot read the config.json files in {root}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def release_root(self, model_dir: str | Path) -> Path:
        """MODEL_DIR, given and of this recipe's architecture (a folder that is absent is named
        by the recipe's own layout check), or an error saying what is wrong."""
        if not model_dir:
            raise ModelLoadError(f"{self.name}: profile real reads MODEL_DIR; give model_dir")
        root = Path(model_dir).expanduser()
        self.check_model_type(root)
        return root

    def check_model_type(self, root: Path) -> None:
        """Refuse a MODEL_DIR whose config.json is of an architecture this recipe does not
        implement (a GPT-2 folder given to the gpa recipe), naming both."""
        if not self.model_types:
            return
        path = root / "config.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # missing or not JSON: weights.check_dir names the file and the layout
        found = str(data.get("model_type", "")) if isinstance(data, dict) else ""
        if found not in self.model_types:
            arch = ", ".join(data.get("architectures") or []) if isinstance(data, dict) else ""
            raise ModelLoadError(
                f"{self.name} implements model_type {' or '.join(self.model_types)}, but "
                f"{path} says model_type {found or '(none)'!r}"
                + (f" (architectures {arch})" if arch else ""),
                f"pick the recipe of that architecture (MODEL=hf reads any causal LM), or "
                f"point MODEL_DIR at a {self.title or self.name} folder")

    def skeletons(self, configs: dict[str, Any], dtype: torch.dtype = torch.float32,
                  ) -> dict[str, nn.Module]:
        """Every component on the meta device (no memory allocated)."""
        return {n: weights.skeleton(self.loader(n), configs[n], dtype)
                for n in self.component_names() if n in configs}

    def describe(self, profile: str, model_dir: str | Path = "") -> list[dict[str, Any]]:
        """Per component: class, parameters and bytes per dtype, counted on the meta device.

        Counted once per process for one recipe class and one set of configs (by content: a
        changed config.json is counted again): the model-loading stage asks twice for its own
        profile, and building the meta modules is most of what a tiny stage computes."""
        configs = self.shape_configs(profile, model_dir)
        key = (type(self), _configs_key(configs))
        if key[1] is None or key not in _DESCRIBED:
            with weights.quiet():
                skel = self.skeletons(configs)
            roles = {c.name: c.role for c in self.components}
            if len(_DESCRIBED) >= 32:
                _DESCRIBED.clear()
            rows = [_describe_row(name, roles[name], m) for name, m in skel.items()]
            if key[1] is None:
                return rows
            _DESCRIBED[key] = rows
        return [dict(row) for row in _DESCRIBED[key]]

    # ---- random weights -----------------------------------------------------------------
    def build(self, profile: str = "tiny", seed: int = 0, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> dict[str, nn.Module]:
        """Random-weight components (component i seeded with seed + i), whole on one device."""
        configs = self.shape_configs(profile)
        with weights.quiet():
            skel = self.skeletons(configs, dtype)
            return {n: weights.materialize(m, {"": str(device)}, seed + i)
                    for i, (n, m) in enumerate(skel.items())}

    def save_random(self, out: Path, profile: str, seed: int) -> None:
        """Write a random-weight model directory with the recipe's tokenizer (tiny cache)."""
        modules = self.build(profile, seed)
        for name, module in modules.items():
            module.save_pretrained(str(self.component_dir(out, name)))
        self.random_tokenizer().save_pretrained(str(out))

    # ---- loading ------------------------------------------------------------------------
    def import_code(self, profile: str) -> None:
        """Import the modeling code once per process, so load_seconds times the load itself.

        transformers imports each architecture lazily on first use; that first import of the
        shared model machinery costs seconds and happens once, whatever is loaded after.
        """
        import transformers.modeling_utils  # noqa: F401  (the shared machinery)
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        if profile == "real":
            return  # the architecture is known only from MODEL_DIR's config.json
        for cfg in self.configs(profile).values():
            if type(cfg) in MODEL_FOR_CAUSAL_LM_MAPPING:
                MODEL_FOR_CAUSAL_LM_MAPPING[type(cfg)]

    def load(self, device: torch.device, dtype: torch.dtype, *, profile: str = "tiny",
             model_dir: str | Path = "", seed: int = 0, device_map: str = "",
             backend: Backend | None = None) -> LoadedModel:
        """Build (tiny, full-shape: random weights under `seed`) or read (real: `model_dir`) the
        model onto `device` in `dtype`; device_map "auto" spreads it over the visible devices,
        "offload" (a CPU side, REFERENCE_FIT=offload) keeps the LM's modules past the free
        host memory on disk (placement.plan_offload).

        timings: config_init_s (configs, placement plan; for full-shape also the random init
        on the device), tokenizer_s, weights_read_s (from_pretrained onto the host, or straight
        onto the planned devices with DEVICE_MAP=auto), to_device_s (moving to DEVICE), and
        load_seconds (the whole load, one timer around all of it). Outside load_seconds:
        imports_s (first import of the modeling code in this process) and cache_build_s (the
        one-time save of the tiny profile). All timers are the device module's synchronized timer.
        """
        be = backend or _backend_for(device)
        profile = self.check_profile(profile)
        timings: dict[str, float] = {"cache_build_s": 0.0}
        notes: list[str] = []
        with weights.quiet():
            with be.timer() as t:
                self.import_code(profile)
            timings["imports_s"] = t.seconds
            root = Path(model_dir).expanduser() if profile == "real" else None
            if profile == "tiny":
                with be.timer() as t:
                    root, built = cache.ensure(self, seed)
                if built:
                    timings["cache_build_s"] = t.seconds
                    notes.append(f"tiny weights built and saved once to {root} "
                                 f"({t.seconds:.2f} s, outside load_seconds)")
            with be.timer() as total:
                if root is None:
                    modules, tok, maps = self._load_random(seed, device, dtype, device_map,
                                                           be, timings, notes)
                else:
                    modules, tok, maps = self._load_dir(root, device, dtype, device_map,
                                                        be, timings, notes)
                model = self.assemble(modules, tok)
        timings["load_seconds"] = total.seconds
        source = str(root) if root else f"random weights, seed {seed} (no checkpoint)"
        return LoadedModel(
            recipe=self, profile=profile, source=source, components=modules, model=model,
            tokenizer=tok, device=device, dtype=dtype, timings=timings,
            placement=placement.flat(maps), device_map=device_map, seed=seed,
            notes=notes,
        )

    def _plan(self, skel: dict[str, nn.Module], device: torch.device, dtype: torch.dtype,
              device_map: str, notes: list[str]) -> dict[str, dict[str, str]]:
        if not device_map:
            return placement.single(skel, device)
        if device_map == placement.OFFLOAD:
            from helpers.models import footprint

            maps = placement.plan_offload(skel, dtype, footprint.offload_room(skel, dtype))
            disk = [k for k, d in maps.get("lm", {}).items() if d == "disk"]
            notes.append(f"disk offload: {len(disk)} of the LM's modules read from "
                         f"{placement.offload_dir()} at every forward (accelerate)")
            return maps
        maps = placement.plan_auto(skel, dtype, device.type)
        used = placement.devices_of(maps)
        if used == ["cpu"]:
            notes.append(placement.CPU_ONLY_NOTE)
            return maps
        notes.append(f"DEVICE_MAP=auto placed modules on {', '.join(used)}")
        if "cpu" in used:
            notes.append(placement.OFFLOAD_NOTE)
        return maps

    def _load_dir(self, root: Path, device: torch.device, dtype: torch.dtype, device_map: str,
                  be: Backend, timings: dict[str, float], notes: list[str]) -> tuple[Any, Any, Any]:
        with be.timer() as t:
            configs = self.shape_configs("real", root, check_weights=True)
            maps = self._plan(self.skeletons(configs, dtype), device, dtype, device_map, notes)
        timings["config_init_s"] = t.seconds
        with be.timer() as t:
            tok = self.read_tokenizer(root)
        timings["tokenizer_s"] = t.seconds
        modules: dict[str, nn.Module] = {}
        with be.timer() as t:
            for name in configs:
                where = maps[name] if device_map else None
                extra = {}
                if device_map == placement.OFFLOAD:  # only a map that reaches the disk is given
                    where = where if "disk" in where.values() else None
                    extra = {"offload_folder": str(placement.offload_dir())} if where else {}
                modules[name] = weights.read(
                    self.loader(name), self.component_dir(root, name), f"{self.name} {name}",
                    configs[name], dtype, where, **self.read_kwargs(name), **extra)
        timings["weights_read_s"] = t.seconds
        left = [n for n in self.component_names() if n not in configs]
        if left:
            notes.append(f"{', '.join(left)}: built-in shapes only; {root} holds no save of "
                         "their classes, so they are not loaded")
        timings["to_device_s"] = 0.0
        if not device_map:
            with be.timer() as t:
                for m in modules.values():
                    m.to(device)
            timings["to_device_s"] = t.seconds
        elif device_map != placement.OFFLOAD:
            notes.append("DEVICE_MAP=auto: weights go straight to their planned devices while "
                         "read, so to_device_s is 0")
        return modules, tok, maps

    def _load_random(self, seed: int, device: torch.device, dtype: torch.dtype, device_map: str,
                     be: Backend, timings: dict[str, float], notes: list[str]) -> tuple[Any, Any, Any]:
        if device_map == placement.OFFLOAD:
            raise ModelLoadError(f"{self.name}: disk offload reads weights from a folder; the "
                                 "full-shape profile makes them whole in host memory",
                                 "use the tiny or the real profile (MODEL_DIR)")
        with be.timer() as t:
            configs = self.configs("full-shape")
            skel = self.skeletons(configs, dtype)
            maps = self._plan(skel, device, dtype, device_map, notes)
            modules = self.random_components(configs, skel, maps, seed, dtype)
        timings["config_init_s"] = t.seconds
        with be.timer() as t:
            tok = self.random_tokenizer()
        timings.update(tokenizer_s=t.seconds, weights_read_s=0.0, to_device_s=0.0)
        notes.extend([FULL_SHAPE_NOTE, *self.random_notes])
        return modules, tok, maps

    # full-shape hooks: a recipe whose release is one module (covo) builds it its own way
    random_notes: tuple[str, ...] = ()

    def random_components(self, configs: dict[str, Any], skel: dict[str, nn.Module],
                          maps: dict[str, dict[str, str]], seed: int,
                          dtype: torch.dtype) -> dict[str, nn.Module]:
        """Random-weight components placed by maps (component i seeded with seed + i)."""
        return {n: _dispatch(weights.materialize(m, maps[n], seed + i), maps[n])
                for i, (n, m) in enumerate(skel.items())}

    def random_tokenizer(self) -> Any:
        """The tokenizer of the tiny and full-shape profiles (no release tokenizer ships)."""
        return shipped_tokenizer()


@dataclass
class LoadedModel:
    """A model ready to run: its components, the end-to-end module, and how it got there."""

    recipe: Recipe
    profile: str
    source: str
    components: dict[str, nn.Module]
    model: nn.Module  # end-to-end: the LM (gpa, hf) or the audio chat module (covo)
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    timings: dict[str, float]
    placement: dict[str, str]  # "component" or "component.module" -> device
    device_map: str = ""
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def lm(self) -> nn.Module:
        return self.components["lm"]

    @property
    def parameters(self) -> dict[str, int]:
        return {name: count(m) for name, m in self.components.items()}

    @property
    def parameters_total(self) -> int:
        return count_unique(list(self.components.values()))

    def input_names(self) -> list[str]:
        """Names example_inputs accepts: every component and the end-to-end entry."""
        return list(dict.fromkeys([*self.components, self.recipe.entry]))

    def module(self, name: str) -> nn.Module:
        return self.model if name == self.recipe.entry else self.components[name]

    def input_device(self, name: str) -> torch.device:
        """Where inputs of a component go: its first parameter's device."""
        return placement.first_device(self.module(name))

    def example_inputs(self, component: str | None = None,
                       batch: int = 1) -> dict[str, torch.Tensor]:
        """Keyword arguments for one forward of `component` (default: the end-to-end module)."""
        name = component or self.recipe.entry
        if name not in self.input_names():
            raise KeyError(f"{self.recipe.name} has no component {name!r}; known: {self.input_names()}")
        return self.recipe.example_inputs(self, name, batch)

    def rows(self) -> list[dict[str, Any]]:
        """One row per component: class, parameters, bytes as loaded, dtype, devices."""
        out = []
        for name, m in self.components.items():
            params = list(m.parameters())
            out.append({
                "component": name,
                "class": type(m).__name__,
                "parameters": count(m),
                "parameters_h": human(count(m)),
                "bytes": sum(p.numel() * p.element_size() for p in params),
                "dtype": dtype_name(params[0].dtype) if params else "",
                "devices": ", ".join(sorted({str(p.device) for p in params})),
            })
        return out

    def metrics(self) -> dict[str, Any]:
        """The loading facts as plain JSON values (for the stage results)."""
        return {
            "recipe": self.recipe.name,
            "profile": self.profile,
            "source": self.source,
            "dtype": dtype_name(self.dtype),
            "device": str(self.device),
            "device_map": self.device_map or "none",
            **{k: round(v, 6) for k, v in self.timings.items()},
            "parameters_total": self.parameters_total,
            "parameters": self.parameters,
            "bytes_total": sum(r["bytes"] for r in self.rows()),
            "placement": self.placement,
            "notes": self.notes,
        }


def weight_digests(loaded: LoadedModel, dtypes: tuple[torch.dtype, ...],
                   ) -> dict[str, dict[str, str]]:
    """sha256 of every weight tensor, cast on the CPU to each of `dtypes`: dtype name ->
    "component.parameter" -> digest. Two sides hold the same weights when the reference's
    digests in the other side's dtype equal that side's own."""
    out: dict[str, dict[str, str]] = {}
    for dtype in dict.fromkeys(dtypes):
        table = {}
        for comp, module in loaded.components.items():
            for name, param in module.named_parameters():  # a tied tensor once
                t = param.detach().cpu()
                t = t.to(dtype) if t.is_floating_point() else t
                raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()  # no copy
                table[f"{comp}.{name}"] = hashlib.sha256(raw).hexdigest()
        out[dtype_name(dtype)] = table
    return out


_DESCRIBED: dict[tuple[type, str | None], list[dict[str, Any]]] = {}  # Recipe.describe's counts


def _configs_key(configs: dict[str, Any]) -> str | None:
    """The configs' content as one string (transformers configs by their full to_dict)."""
    def plain(c: Any) -> Any:  # an object (BiCodecConfig) as its attributes; else as is
        if hasattr(c, "to_dict"):
            return c.to_dict()
        return vars(c) if hasattr(c, "__dict__") else repr(c)

    try:
        return json.dumps(configs, sort_keys=True, default=plain)
    except (TypeError, ValueError):  # keys of mixed types, a cycle: counted every time
        return None


def _describe_row(name: str, role: str, m: nn.Module) -> dict[str, Any]:
    n = count(m)
    row: dict[str, Any] = {"component": name, "class": type(m).__name__, "role": role,
                           "parameters": n, "parameters_h": human(n)}
    row.update({f"bytes_{dt}": n * DTYPE_BYTES[dt] for dt in RUN_DTYPES})
    inp, out = _embeddings(m)
    if isinstance(inp, nn.Embedding) and isinstance(out, nn.Linear):
        row["input_embeddings"] = inp.weight.numel()
        row["output_embeddings"] = out.weight.numel()
        row["tied"] = out.weight is inp.weight
    return row


def _embeddings(m: nn.Module) -> tuple[Any, Any]:
    """(input embedding table, output projection) of a causal LM; (None, None) otherwise."""
    try:
        return m.get_input_embeddings(), m.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None, None


def total_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of describe rows (components never share tensors across a recipe)."""
    n = sum(r["parameters"] for r in rows)
    out: dict[str, Any] = {"component": "total", "class": "", "role": "", "parameters": n,
                           "parameters_h": human(n)}
    out.update({f"bytes_{dt}": n * DTYPE_BYTES[dt] for dt in RUN_DTYPES})
    return out


def _dispatch(module: nn.Module, device_map: dict[str, str]) -> nn.Module:
    """Add accelerate's hooks that move activations between devices, when there are several."""
    if len(set(device_map.values())) > 1:
        from accelerate import dispatch_model

        return dispatch_model(module, device_map=device_map)
    return module


def _backend_for(device: torch.device) -> Any:
    from helpers import device as devices

    return devices.backend(devices.select(str(device)))
