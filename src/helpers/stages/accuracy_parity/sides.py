"""Running one side: load the model for a Side, run every part (forward, hidden states,
generation, audio components) on the same inputs, keep the outputs on the host, free it.

Audio components: one with typed outputs (helpers.models.audio_components: tokens, codes,
waveforms) runs on every fixture of the plan, its inputs made from the clip on the side's own
device and in its dtype (the front end included); any other (Covo's encoder and adapter) runs
on the recipe's inputs, made once on the reference and copied. The golden runs the first
fixture only (float64 of every component on every clip would dominate the stage's time)."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import torch

from helpers import audio, generate, outputs, trajectory
from helpers import device as devices
from helpers.config import RunConfig
from helpers.models.base import LoadedModel, weight_digests
from helpers.stages import kit
from helpers.stages.accuracy_parity import modules as isolated
from helpers.stages.accuracy_parity.plan import (
    FRONTEND_FIXTURE,
    GOLDEN_MEMORY_SHARE,
    Plan,
    Prompt,
    load_prompts,
)
from helpers.stages.kit import Side, failure_text

RECIPE_INPUTS = "recipe inputs"  # the input key of a component compared on one input

# ---- the fixtures every audio component runs on -----------------------------------------------


@dataclass
class FixtureClip:
    """One shipped fixture as the components hear it, and its Whisper log-mel on the target
    device and on the CPU (float32 STFT on both): the front end both sides start from."""

    fixture: audio.Fixture
    samples16: Any = None  # mono 16 kHz float32, None when it did not load
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    mel_dev: Any = None  # [128, frames] numpy
    mel_ref: Any = None

    @property
    def name(self) -> str:
        return self.fixture.name

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def duration_s(self) -> float:
        return 0.0 if self.samples16 is None else self.samples16.shape[-1] / 16_000

    def at(self, rate: int) -> Any:
        """The clip at a component's input rate (read again from the file, as upstream does)."""
        return self.samples16 if rate == 16_000 else audio.load_checked(
            self.fixture.path, sr=rate).samples


def load_clips(fixtures: list[audio.Fixture], device: torch.device) -> list[FixtureClip]:
    """Every fixture read, validated and resampled to 16 kHz mono, with its log-mel on
    `device` and on the CPU; a clip that fails is a FixtureClip with its error."""
    clips = []
    for fixture in fixtures:
        clip = FixtureClip(fixture)
        try:
            loaded = audio.load_checked(clip.fixture.path, sr=16_000)
            clip.samples16, clip.warnings = loaded.samples, loaded.warnings
            clip.mel_dev = audio.log_mel(loaded.samples, audio.WHISPER, device=device).cpu().numpy()
            clip.mel_ref = audio.log_mel(loaded.samples, audio.WHISPER, device="cpu").numpy()
        except Exception as exc:  # one bad clip is a row, not a crashed stage
            clip.error = failure_text(exc)
        clips.append(clip)
    return clips

# ---- running one side --------------------------------------------------------------------------

@dataclass
class SideRun:
    """Everything one side produced, on the host; a part that failed is named in errors."""

    side: Side
    logits: list[torch.Tensor] = field(default_factory=list)  # per prompt [S, V]
    hidden: list[torch.Tensor] = field(default_factory=list)  # per prompt [L + 1, S, H]
    layer_names: list[str] = field(default_factory=list)
    tokens: torch.Tensor | None = None  # [P, N] greedy new tokens
    texts: list[str] = field(default_factory=list)  # the decoded new tokens, per prompt
    again_logits: list[torch.Tensor] = field(default_factory=list)  # second forward (target)
    again_tokens: torch.Tensor | None = None  # second generation (target) [P, N]
    # per prompt [N, V]: the reference's own greedy step logits, every other side's logits
    # teacher-forced on the reference's ids (helpers.trajectory compares them step by step)
    steps: list[torch.Tensor] = field(default_factory=list)
    # component -> input (a fixture's name, or RECIPE_INPUTS) -> named outputs
    components: dict[str, dict[str, dict[str, torch.Tensor]]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)  # component -> the dtype it ran in
    inputs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # host copies
    inputs_note: dict[str, str] = field(default_factory=dict)  # name -> what the inputs are
    errors: dict[str, str] = field(default_factory=dict)  # part -> "TypeError: ..."
    seconds: dict[str, float] = field(default_factory=dict)  # part -> synchronized seconds
    parameters: int = 0
    digests: dict[str, dict[str, str]] = field(default_factory=dict)  # dtype -> tensor -> sha256
    # module name -> tensors (helpers.stages.accuracy_parity.modules): the target's captured
    # {input, output}; the baseline's replay of them {output, golden}
    modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def failed(self, *parts: str) -> str:
        """'' when the parts ran; else the first error, named with side and part."""
        for part in ("load", *parts):
            if part in self.errors:
                return f"{self.side.role} ({self.side.label}) {part}: {self.errors[part]}"
        return ""


def prompt_rows(inputs: list[str], keys: list[str]) -> list[int]:
    """The rows (a side's prompt order) of the prompt inputs `keys`, given the stage's input
    names in order (helpers.outputs: "prompt:<lang>:<index>", then "fixture:<name>")."""
    mine = [k for k in inputs if k.startswith("prompt:")]
    return [mine.index(k) for k in keys]


def subset(run: SideRun, rows: list[int], fixtures: set[str] | list[str],
           role: str = "") -> SideRun:
    """The side on the prompts `rows` (indices) and the fixtures named, nothing else (the
    components' recipe inputs stay); playing `role` when one is given."""
    def at(xs: list[Any]) -> list[Any]:
        return [xs[i] for i in rows] if xs else xs

    side = dataclasses.replace(run.side, role=role) if role else run.side
    return dataclasses.replace(
        run, side=side, logits=at(run.logits), hidden=at(run.hidden), steps=at(run.steps),
        texts=at(run.texts), tokens=None if run.tokens is None else run.tokens[rows],
        components={c: {k: v for k, v in by.items() if k in fixtures or k == RECIPE_INPUTS}
                    for c, by in run.components.items()})


def _host(x: torch.Tensor, side: Side) -> torch.Tensor:
    """A detached host copy: float64 for a float64 side, float32 otherwise (bf16 -> f32 is exact)."""
    dtype = torch.float64 if side.dtype == torch.float64 else torch.float32
    return x.detach().to("cpu", dtype)


def _part(run: SideRun, be: devices.Backend, name: str, fn: Callable[[], None]) -> None:
    """Run one part, timed with the backend's synchronized timer; an exception becomes data."""
    try:
        with be.timer() as t:
            fn()
    except Exception as exc:  # a failure of one part is a row of the report
        run.errors[name] = f"{type(exc).__name__}: {exc}"
        return
    run.seconds[name] = round(t.seconds, 4)


def layer_names(n_states: int, n_layers: int) -> list[str]:
    """Names of a Hugging Face causal LM's hidden_states: embeddings, then each layer's output;
    the last one has the final norm applied."""
    if n_states != n_layers + 1:
        return [f"state {i}" for i in range(n_states)]
    return ["embeddings"] + [f"layer {i}" for i in range(n_layers - 1)] + [
        f"layer {n_layers - 1} + norm"]


def forward_prompts(run: SideRun, loaded: LoadedModel, prompts: list[Prompt], hidden: bool = True,
                    ) -> list[torch.Tensor]:
    """One forward per prompt (no padding): logits [S, V] on the host; hidden states if asked."""
    lm, tok = loaded.lm, loaded.tokenizer
    dev = loaded.input_device("lm")
    out_logits = []
    for p in prompts:
        ids = tok(p.text, return_tensors="pt")["input_ids"].to(dev)  # [1, S]
        out = lm(input_ids=ids, output_hidden_states=hidden, use_cache=False)
        out_logits.append(_host(out.logits[0], run.side))  # [S, V]
        if hidden:
            states = torch.stack([_host(h[0], run.side) for h in out.hidden_states])  # [L+1, S, H]
            run.hidden.append(states)
    if hidden:
        n = len(run.hidden[0])
        run.layer_names = layer_names(n, getattr(lm.config, "num_hidden_layers", n - 1))
    return out_logits


def _prompt_ids(loaded: LoadedModel, p: Prompt) -> dict[str, torch.Tensor]:
    ids = loaded.tokenizer(p.text, return_tensors="pt")["input_ids"]  # [1, S]
    return {"input_ids": ids.to(loaded.input_device("lm"))}


def _batches(prompts: list[Prompt], batch: int) -> list[list[int]]:
    """The prompts' indices in decode batches of `batch` (0: all of them in one)."""
    size = batch or len(prompts) or 1
    return [list(range(i, min(i + size, len(prompts)))) for i in range(0, len(prompts), size)]


def _padded(loaded: LoadedModel, prompts: list[Prompt]) -> dict[str, torch.Tensor]:
    """The prompts' own ids (each tokenized alone, as _prompt_ids), left-padded into one batch
    with the mask generate.Step reads: input_ids and attention_mask [B, S]. One prompt: its
    ids alone, no mask."""
    rows = [_prompt_ids(loaded, p)["input_ids"][0] for p in prompts]  # each [S_i]
    if len(rows) == 1:
        return {"input_ids": rows[0][None]}
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), generate.pad_id(loaded.tokenizer), dtype=torch.long,
                     device=rows[0].device)  # [B, S]
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return {"input_ids": ids, "attention_mask": mask}


def greedy(loaded: LoadedModel, prompts: list[Prompt], new_tokens: int, batch: int = 0,
           steps: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Greedy decoding of exactly new_tokens tokens for each prompt, `batch` prompts at a time
    in one left-padded batch (0: all; 1: each on its own, no padding): [P, N]. The end tokens
    are blocked so every row has N comparable tokens. `steps`, when given, receives each
    prompt's step logits [N, V] (the trajectory others are forced on)."""
    s = generate.exactly(generate.eos_ids(loaded.lm, loaded.tokenizer))
    rows = []
    for group in _batches(prompts, batch):
        d = generate.decode(loaded.lm, _padded(loaded, [prompts[i] for i in group]), new_tokens,
                            s, keep_logits=steps is not None)
        rows.extend(d.ids)  # each [N]
        if steps is not None:
            steps.extend(d.logits)  # each [N, V]
    return torch.stack(rows)  # [P, N]


def forced(loaded: LoadedModel, prompts: list[Prompt], ids: torch.Tensor, batch: int = 0,
           ) -> list[torch.Tensor]:
    """Teacher forcing: each prompt fed the given ids [P, N] step by step through this side's
    own KV cache, as it decodes, `batch` prompts at a time (as greedy); its step logits [N, V]
    per prompt, on the host."""
    out: list[torch.Tensor] = []
    for group in _batches(prompts, batch):
        out.extend(generate.decode(loaded.lm, _padded(loaded, [prompts[i] for i in group]),
                                   ids.shape[1], forced=ids[group]).logits)
    return out


def first_tensor(out: Any) -> torch.Tensor:
    """The main output of a module: a tensor, a ModelOutput's first field, a tuple's first item."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find the output tensor in a {type(out).__name__}")


def audio_components(loaded: LoadedModel) -> list[str]:
    """Every component of the recipe except the language model (compared through its logits)."""
    return [name for name in loaded.components if name != "lm"]


def component_inputs(loaded: LoadedModel) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """Host copies of the inputs each audio component without typed outputs is compared on,
    and what they are (the typed ones run on every fixture instead).

    A Whisper-style encoder (config with num_mel_bins and max_source_positions, taking
    input_features) gets the recipe's own front end on a shipped fixture where the recipe has
    one (fixture_features), else the plain Whisper log-mel of a fixture zero-padded to its
    window; every other component gets the recipe's example inputs (seeded)."""
    inputs, notes = {}, {}
    for name in audio_components(loaded):
        if _audio_part(name) is not None:
            continue
        kwargs = {k: v.detach().cpu() for k, v in loaded.example_inputs(name).items()}
        notes[name] = "recipe example inputs"
        if "input_features" in kwargs and hasattr(loaded.recipe, "fixture_features"):
            # the release's own front end (Covo: 24 kHz -> hop trim -> 16 kHz -> log-mel)
            fixture = getattr(loaded.recipe, "fixture", FRONTEND_FIXTURE)
            notes[name] = f"the recipe's release front end on fixture {fixture}"
            inputs[name] = kwargs
            continue
        mel = _fixture_features(loaded.components[name], kwargs)
        if mel is not None:
            kwargs["input_features"] = mel
            notes[name] = f"log-mel of fixture {FRONTEND_FIXTURE}, zero-padded to the encoder window"
        inputs[name] = kwargs
    return inputs, notes


def _fixture_features(module: Any, kwargs: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """[1, n_mels, frames] Whisper log-mel of the fixture, or None if the module takes no mel."""
    cfg = getattr(module, "config", None)
    n_mels = getattr(cfg, "num_mel_bins", None)
    positions = getattr(cfg, "max_source_positions", None)
    if "input_features" not in kwargs or not n_mels or not positions:
        return None
    from helpers import audio

    spec = audio.whisper_spec(n_mels)
    frames = kwargs["input_features"].shape[-1]
    wave = audio.pad_or_trim(audio.load_fixture(FRONTEND_FIXTURE, spec.sample_rate),
                             frames * spec.hop_length)
    mel = audio.log_mel(wave, spec)  # [M, frames]
    if tuple(mel.shape) != tuple(kwargs["input_features"].shape[1:]):
        return None
    return mel[None].expand_as(kwargs["input_features"]).contiguous()  # [B, M, frames]


def _audio_part(name: str) -> Any:
    """helpers.models.audio_components when it knows this component (typed outputs: tokens,
    codes, waveforms), else None: the component's first output tensor is compared."""
    from helpers.models import audio_components

    return audio_components if name in audio_components.PARTS else None


def run_component(loaded: LoadedModel, name: str, kwargs: dict[str, torch.Tensor], side: Side,
                  ) -> dict[str, torch.Tensor]:
    """One forward of a component without typed outputs on inputs moved to its device and
    cast to the side's dtype: its first output tensor on the host."""
    module = loaded.components[name]
    dev = loaded.input_device(name)
    moved = {k: v.to(dev, side.dtype) if v.is_floating_point() else v.to(dev)
             for k, v in kwargs.items()}
    return {"output": _host(first_tensor(module(**moved)), side)}


def run_on_clip(loaded: LoadedModel, name: str, clip: FixtureClip, side: Side,
                codes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A typed audio component on one fixture: inputs made from the clip on this side's device
    in the component's dtype; a codec decodes `codes` (the reference's) when given, so its
    decoder is compared on equal input. Named outputs on the host."""
    from helpers.models import audio_components as ac

    module = loaded.components[name]
    dtype = next(module.parameters()).dtype
    kwargs = ac.inputs_for(name, clip.at(ac.part(name).input_rate), loaded.input_device(name),
                           dtype, part_config=ac.config_of(name, module))
    outs = ac.run(name, module, kwargs, codes=codes)
    book = outs.pop("codebook", None)
    if book is not None:  # each frame's float64 nearest code and margin to the second [N]
        nearest, margins = trajectory.code_margins(outs["states"][0], book)
        outs["nearest"], outs["margins"] = torch.from_numpy(nearest), torch.from_numpy(margins)
    return {k: _host(v, side) if v.is_floating_point() and v.dtype != torch.float64
            else v.detach().cpu() for k, v in outs.items()}


def _run_clips(run: SideRun, loaded: LoadedModel, name: str, clips: list[FixtureClip],
               reference: SideRun | None) -> None:
    """One typed component on every clip; a clip that fails is an error of part 'name clip'."""
    outs = run.components.setdefault(name, {})
    for clip in clips:
        ref = (reference.components.get(name, {}).get(clip.name, {}) if reference else {})
        try:
            outs[clip.name] = run_on_clip(loaded, name, clip, run.side, ref.get("codes"))
        except Exception as exc:  # a failure on one clip is a row of the report
            run.errors[f"{name} on {clip.name}"] = f"{type(exc).__name__}: {exc}"


def collect_loaded(loaded: LoadedModel, side: Side, prompts: list[Prompt], new_tokens: int,
                   inputs: dict[str, dict[str, torch.Tensor]] | None = None,
                   again: bool = False, reference: SideRun | None = None,
                   digest_dtypes: tuple[torch.dtype, ...] = (),
                   clips: list[FixtureClip] | None = None,
                   component_dtypes: dict[str, torch.dtype] | None = None,
                   modules: str | dict[str, dict[str, torch.Tensor]] = "",
                   batch: int = 0) -> SideRun:
    """Run every part on an already-loaded model. `inputs` are the inputs of the components
    without typed outputs (None: make them here, as the reference does); `again` repeats the
    forward and the generation for the determinism check; `reference` lends its codec codes;
    digest_dtypes: the dtypes to fingerprint the weights in (default: the side's own); clips:
    the fixtures the typed components run on; component_dtypes: a dtype per component (the
    component_dtype rule; default: the side's); modules: "capture" (the target: every
    single-tensor LM module's input and output on the first prompt) or the target's capture to
    replay (the baseline), see helpers.stages.accuracy_parity.modules; batch: prompts per
    decode batch (greedy)."""
    run = SideRun(side, parameters=loaded.parameters_total)
    _part(run, side.backend, "weights", lambda: run.digests.update(
        weight_digests(loaded, digest_dtypes or (side.dtype,))))
    for name, dtype in (component_dtypes or {}).items():
        loaded.components[name].to(dtype)
    be = side.backend
    with torch.inference_mode():
        _part(run, be, "forward", lambda: run.logits.extend(forward_prompts(run, loaded, prompts)))
        if again:
            _part(run, be, "forward again", lambda: run.again_logits.extend(
                forward_prompts(run, loaded, prompts, hidden=False)))
        if modules == "capture" and prompts:
            _part(run, be, "modules", lambda: run.modules.update(isolated.capture(
                loaded.lm, _prompt_ids(loaded, prompts[0])["input_ids"])))
        elif isinstance(modules, dict) and modules:
            _part(run, be, "modules", lambda: run.modules.update(isolated.replay(
                loaded.lm, modules, side.dtype)))
        if inputs is None:
            _part(run, be, "inputs", lambda: _keep_inputs(run, loaded))
        else:
            run.inputs = inputs
        for name in audio_components(loaded):
            run.dtypes[name] = devices.dtype_name(next(loaded.components[name].parameters()).dtype)
            if _audio_part(name) is not None:
                usable = [c for c in clips or [] if c.ok]
                _part(run, be, name, lambda n=name, c=usable: _run_clips(run, loaded, n, c,
                                                                         reference))
            elif name in run.inputs:
                _part(run, be, name, lambda n=name: run.components.__setitem__(
                    n, {RECIPE_INPUTS: run_component(loaded, n, run.inputs[n], side)}))
    leader = reference if reference is not None and reference.tokens is not None else None
    if new_tokens and leader is not None:
        _part(run, be, "teacher-forced", lambda: run.steps.extend(
            forced(loaded, prompts, leader.tokens, batch)))
    if new_tokens and side.role not in ("golden", "baseline"):
        _part(run, be, "generate", lambda: setattr(run, "tokens", greedy(
            loaded, prompts, new_tokens, batch, run.steps if leader is None else None)))
        if run.tokens is not None:
            run.texts = [loaded.tokenizer.decode(row) for row in run.tokens]
        if again:
            _part(run, be, "generate again",
                  lambda: setattr(run, "again_tokens", greedy(loaded, prompts, new_tokens, batch)))
    return run


def _keep_inputs(run: SideRun, loaded: LoadedModel) -> None:
    run.inputs, run.inputs_note = component_inputs(loaded)


def collect(cfg: RunConfig, side: Side, prompts: list[Prompt], new_tokens: int,
            inputs: dict[str, dict[str, torch.Tensor]] | None = None,
            again: bool = False, reference: SideRun | None = None,
            digest_dtypes: tuple[torch.dtype, ...] = (), clips: list[FixtureClip] | None = None,
            component_dtypes: dict[str, torch.dtype] | None = None,
            modules: str | dict[str, dict[str, torch.Tensor]] = "", batch: int = 0) -> SideRun:
    """Load one side, run every part, free the model; a failed load is recorded, not raised."""
    be = side.backend
    try:
        with be.timer() as t:
            loaded = kit.load(cfg, side)
    except Exception as exc:
        run = SideRun(side)
        run.errors["load"] = f"{type(exc).__name__}: {exc}"
        return run
    run = collect_loaded(loaded, side, prompts, new_tokens, inputs, again, reference,
                         digest_dtypes, clips, component_dtypes and {
                             n: d for n, d in component_dtypes.items() if n in loaded.components},
                         modules, batch)
    run.seconds["load"] = round(t.seconds, 4)
    del loaded
    gc.collect()
    be.empty_cache()
    return run


def replay_modules(cfg: RunConfig, side: Side, captured: dict[str, dict[str, torch.Tensor]],
                   ) -> SideRun:
    """Only the module replay (helpers.stages.accuracy_parity.modules) of the target's capture
    on `side` (the baseline), for a baseline whose other outputs are already known: its
    `modules`, or the error of the load or the replay."""
    run = SideRun(side)
    try:
        loaded = kit.load(cfg, side)
    except Exception as exc:
        run.errors["load"] = failure_text(exc)
        return run
    _part(run, side.backend, "modules", lambda: run.modules.update(isolated.replay(
        loaded.lm, captured, side.dtype)))
    loaded = None
    gc.collect()
    return run


@dataclass
class Runs:
    """The three sides of one stage run, on the same prompts and inputs."""

    plan: Plan
    prompts: list[Prompt]
    reference: SideRun
    target: SideRun
    golden: SideRun | None
    golden_note: str
    clips: list[FixtureClip] = field(default_factory=list)
    baseline: SideRun | None = None  # the CPU in the target's dtype, when it is not float32

    @property
    def sides(self) -> list[SideRun]:
        return [r for r in (self.reference, self.target, self.golden, self.baseline)
                if r is not None]

    @property
    def comparator(self) -> SideRun:
        """The side whose error against the golden the target's is held to: the CPU in the
        target's own dtype (the baseline), or the reference when they share a dtype."""
        return self.baseline if self.baseline is not None else self.reference

    def timings(self) -> pd.DataFrame:
        """Seconds per side and part (device-synchronized timer)."""
        rows = [{"side": r.side.role, "config": r.side.label, "part": part, "seconds": s}
                for r in self.sides for part, s in r.seconds.items()]
        return pd.DataFrame(rows)

    def timing_protocol(self) -> str:
        be = self.plan.target.backend
        return ("each part once, no warmup (what the stage costs, not a benchmark); target: "
                f"{be.timer_protocol}; CPU sides: time.perf_counter around the part")

    def errors(self) -> pd.DataFrame:
        rows = [{"side": r.side.role, "config": r.side.label, "part": part, "error": e}
                for r in self.sides for part, e in r.errors.items()]
        return pd.DataFrame(rows, columns=["side", "config", "part", "error"])


def golden_decision(mode: str, parameters: int) -> tuple[bool, str]:
    """Whether to run the float64 golden: on, off, or auto (when its weights fit in half the
    free host memory)."""
    if mode == "off":
        return False, "golden off (knob golden = \"off\")"
    if parameters <= 0:
        return False, "no golden: the reference did not load, so its size is unknown"
    need, free = parameters * 8, psutil.virtual_memory().available
    sizes = f"float64 weights {need / 2**30:.2f} GiB, free host memory {free / 2**30:.1f} GiB"
    if mode == "on" or need <= GOLDEN_MEMORY_SHARE * free:
        return True, f"golden CPU float64 ({sizes})"
    return False, f"no golden: {sizes} (auto needs at most {GOLDEN_MEMORY_SHARE:.0%} of free)"


def run_all(cfg: RunConfig, p: Plan, store: outputs.Store | None = None) -> Runs:
    """Reference, then target (twice for determinism), then the golden when wanted, then the
    baseline (the CPU in the target's dtype) when that is not the reference's; the audio
    components on every fixture of the plan. Every side but the reference is also fed the
    reference's greedy ids (teacher forcing). With a store, each side is saved as it ends and
    the CPU sides are taken from the store's reused outputs when it has them; a reused
    reference whose weights differ from the target's (sha256 per tensor) is computed again."""
    prompts = load_prompts(p.languages)
    clips = load_clips([audio.fixture(n) for n in p.fixtures], p.target.device)
    with devices.full_float32(p.target.device, enabled=not p.tf32):
        runs = _sides(cfg, p, prompts, clips, store)
        if store is not None and store.source is not None and not _same_weights(runs):
            store.source, store.how = None, ("the reused reference held other weights than "
                                             "the target (sha256 per tensor): computed again")
            runs = _sides(cfg, p, prompts, clips, store)
    if store is not None:
        store.fill_cache([s for s in runs.sides if s.side.role != "target"])
    return runs


def _same_weights(runs: Runs) -> bool:
    """The target's weight digests equal the reference's in the target's dtype (or one side
    has none: the weights section then says why)."""
    dtype = runs.target.side.dtype_name
    mine, want = runs.target.digests.get(dtype), runs.reference.digests.get(dtype)
    return not mine or not want or mine == want


def _sides(cfg: RunConfig, p: Plan, prompts: list[Prompt], clips: list[FixtureClip],
           store: outputs.Store | None) -> Runs:
    def reused(role: str) -> SideRun | None:
        return store.reused(role) if store is not None else None

    def kept(run: SideRun | None) -> SideRun | None:
        if store is not None and run is not None:
            store.keep(run)
        return run

    ref = reused("reference") or collect(
        cfg, p.reference, prompts, p.new_tokens, clips=clips,
        digest_dtypes=(p.reference.dtype, torch.float32, p.target.dtype, torch.float64),
        batch=p.decode_batch)
    if store is not None:
        store.weights = outputs.weights_hash(ref.digests)
    kept(ref)
    tgt = kept(collect(cfg, p.target, prompts, p.new_tokens, inputs=ref.inputs, again=True,
                       reference=ref, clips=clips,
                       component_dtypes=p.component_dtypes(list(ref.dtypes)),
                       modules="capture" if p.baseline_side is not None else "",
                       batch=p.decode_batch))
    tgt.inputs_note = ref.inputs_note
    use, note = golden_decision(p.golden, ref.parameters)
    if p.reference.dtype == torch.float64:
        use, note = False, "no separate golden: the reference itself runs in float64"
    gold = reused("golden")
    if gold is not None:
        note = "golden CPU float64, reused with the reference"
    elif use:
        gold = collect(cfg, p.golden_side, prompts, p.new_tokens, inputs=ref.inputs,
                       reference=ref, clips=[c for c in clips if c.ok][:1], batch=p.decode_batch)
    base = reused("baseline")
    if base is not None and tgt.modules:  # the module replay depends on this run's target
        again = replay_modules(cfg, p.baseline_side, tgt.modules)
        base.modules, base.errors = again.modules, {**base.errors, **again.errors}
    elif p.baseline_side is not None:
        base = collect(cfg, p.baseline_side, prompts, p.new_tokens, inputs=ref.inputs,
                       reference=ref, modules=tgt.modules, batch=p.decode_batch)
    kept(gold)
    kept(base)
    return Runs(p, prompts, ref, tgt, gold, note, clips, base)


def stage_store(cfg: RunConfig, p: Plan, run_dir: str | Path) -> outputs.Store:
    """Where the stage saves its sides and finds its CPU sides: the inputs (each prompt's
    text, each fixture's file bytes) and the settings that decide its outputs."""
    inputs: dict[str, str] = {}
    for lang in p.languages:
        for i, q in enumerate(load_prompts((lang,))):
            inputs[f"prompt:{lang}:{i}"] = outputs.digest(q.text)
    for name in p.fixtures:
        inputs[f"fixture:{name}"] = outputs.file_digest(audio.fixture(name).path)
    settings = {k: v for k, v in p.as_dict().items() if k not in ("target", "reason")}
    settings.update(model=cfg.model, profile=cfg.profile, seed=cfg.seed,
                    target_dtype=p.target.dtype_name,
                    baseline_dtype=p.baseline_side.dtype_name if p.baseline_side else "")
    return outputs.store(outputs.PARITY, (pack, side_run), run_dir, cfg, inputs, settings,
                         p.target.label)


# ---- saved outputs: the one conversion each way (helpers.outputs writes and reads the files) ---

SIDE_FIELDS = ("layer_names", "texts", "dtypes", "inputs_note", "errors", "seconds",
               "parameters", "digests")  # kept as JSON with the side's tensors


def side_tensors(run: SideRun) -> dict[str, torch.Tensor]:
    """What of a side is kept: logits, hidden states and step logits per prompt; greedy ids;
    audio component outputs per input; the components' inputs."""
    out: dict[str, torch.Tensor] = {}
    for name in ("logits", "hidden", "steps"):
        out.update({f"{name}/{i}": t for i, t in enumerate(getattr(run, name))})
    for name in ("tokens", "again_tokens"):
        if getattr(run, name) is not None:
            out[name] = getattr(run, name)
    for comp, by_input in run.components.items():
        for given, outs in by_input.items():
            out.update({f"components/{comp}/{given}/{k}": v for k, v in outs.items()})
    for comp, kwargs in run.inputs.items():
        out.update({f"inputs/{comp}/{k}": v for k, v in kwargs.items()})
    return out


def pack(run: SideRun) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A side as saved: its tensors, and its other fields as JSON."""
    return side_tensors(run), {"side": run.side.record(),
                               **{f: getattr(run, f) for f in SIDE_FIELDS}}


def side_run(saved: outputs.SavedRun, role: str = "target") -> SideRun:
    """A side rebuilt from saved outputs: every comparison of the stage works on it."""
    meta = saved.side_meta(outputs.PARITY, role)
    run = SideRun(Side.from_record(meta["side"]), **{f: meta[f] for f in SIDE_FIELDS})
    lists: dict[str, dict[int, torch.Tensor]] = {"logits": {}, "hidden": {}, "steps": {}}
    for key, t in saved.tensors(outputs.PARITY, role).items():
        head, _, rest = key.partition("/")
        if head in lists:
            lists[head][int(rest)] = t
        elif head in ("tokens", "again_tokens"):
            setattr(run, head, t)
        elif head == "components":
            comp, rest = rest.split("/", 1)
            given, out = rest.rsplit("/", 1)
            run.components.setdefault(comp, {}).setdefault(given, {})[out] = t
        elif head == "inputs":
            comp, arg = rest.rsplit("/", 1)
            run.inputs.setdefault(comp, {})[arg] = t
    for name, by_index in lists.items():
        setattr(run, name, [by_index[i] for i in sorted(by_index)])
    return run
