"""Stage 4, accuracy parity: does the target (DEVICE, DTYPE) compute the same model as the CPU?

Who is compared with whom:
  reference  the CPU in float32 (knob reference_dtype): the numbers the target is held to
  target     DEVICE in DTYPE, through device.select / device.resolve_dtype; on a machine without
             an accelerator that is the CPU in bfloat16, so the stage still measures a real
             difference (precision instead of hardware)
  golden     the CPU in float64 (knob golden), when it fits in memory: it tells the target's
             error apart from float32's own (msprobe's "benchmark" standard)
Each side is loaded, run on the same inputs and freed in turn (reference, target, golden), so
one model is in memory at a time; outputs are kept on the host (float32; float64 for golden).

Sections, each a table plus its checks: logits over the shipped prompts, hidden states layer by
layer, greedy generation, determinism (the target twice), the audio front end (log-mel on the
device vs the CPU) and every audio component of the recipe on identical inputs. All metrics come
from helpers.parity (float64, inside their ranges); thresholds from data/thresholds.json.
A part that crashes on one side is a failed check naming the error, never a crashed stage.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch

from helpers import device as devices
from helpers import parity
from helpers.records import Check

REFERENCE_DTYPES = ("float32", "float64")
GOLDEN_MODES = ("auto", "on", "off")
GOLDEN_MEMORY_SHARE = 0.5  # auto: the float64 copy may use at most half the free host memory
NEW_TOKENS_AUTO = {"tiny": 8}  # new_tokens = 0 picks this per profile ...
NEW_TOKENS_DEFAULT = 64  # ... or this (the Covo report's 64-token greedy runs)
FRONTEND_FIXTURE = "en_fox"  # the clip fed to audio encoders that take log-mel features


LOGIT_LABELS = {"rel_l2_pct": "relative L2 (%)", "cosine": "cosine",
                "top1_agreement_pct": "top-1 agreement (%)", "top5_overlap": "top-5 overlap (of 5)"}


class AccuracyError(ValueError):
    """A stage knob has a value the stage cannot use; the message says which values work."""


# ---- who is compared with whom ---------------------------------------------------------------

@dataclass(frozen=True)
class Side:
    """One configuration that runs the model: role, device and dtype."""

    role: str  # "target" | "reference" | "golden"
    device: torch.device
    dtype: torch.dtype
    device_map: str = ""

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    @property
    def label(self) -> str:
        spread = " (device_map auto)" if self.device_map else ""
        return f"{self.device} {self.dtype_name}{spread}"


@dataclass(frozen=True)
class Plan:
    """The target and reference of one run, the golden mode and the workload."""

    target: Side
    reference: Side
    golden: str  # "auto" | "on" | "off"
    reason: str  # why this target device
    new_tokens: int
    languages: tuple[str, ...]
    model: str = ""

    @property
    def golden_side(self) -> Side:
        return Side("golden", torch.device("cpu"), torch.float64)

    @property
    def same_config(self) -> bool:
        return (self.target.device.type == "cpu" and self.target.dtype == self.reference.dtype)

    def describe(self) -> str:
        """Markdown that says plainly what is compared with what."""
        t, r = self.target, self.reference
        lines = [f"**Target `{t.label}`** against **reference `{r.label}`**"
                 f" (golden: CPU float64, mode `{self.golden}`).",
                 f"Device choice: {self.reason}."]
        if t.device.type == "cpu" and t.dtype != r.dtype:
            lines.append(f"No accelerator is in use, so both sides run on the CPU: the differences "
                         f"below are those of {t.dtype_name} arithmetic against {r.dtype_name}, "
                         "not of a device against the CPU.")
        if self.same_config:
            lines.append("Target and reference are the same configuration: every difference "
                         "must be exactly zero.")
        lines.append(f"Workload: prompts in {', '.join(self.languages)}; greedy generation of "
                     f"{self.new_tokens} new tokens.")
        return "\n\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target.label, "reference": self.reference.label,
                "golden": self.golden, "reason": self.reason, "new_tokens": self.new_tokens,
                "languages": list(self.languages)}


def plan(cfg: Any, reference_dtype: str = "float32", golden: str = "auto",
         new_tokens: int = 0, languages: str = "en,zh") -> Plan:
    """Resolve target and reference for a RunConfig and the stage knobs."""
    if reference_dtype not in REFERENCE_DTYPES:
        raise AccuracyError(f"reference_dtype {reference_dtype!r} is not valid; the CPU reference "
                            f"runs in one of {', '.join(REFERENCE_DTYPES)}")
    if golden not in GOLDEN_MODES:
        raise AccuracyError(f"golden {golden!r} is not valid; use auto (when it fits in memory), "
                            "on or off")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 0:
        raise AccuracyError(f"new_tokens must be an integer >= 0 (0 = auto), got {new_tokens!r}")
    langs = _languages(languages)
    sel = devices.select(cfg.device)
    dtype = devices.resolve_dtype(sel, cfg.dtype)
    target = Side("target", sel.device, dtype, cfg.device_map)
    reference = Side("reference", torch.device("cpu"), getattr(torch, reference_dtype))
    n = new_tokens or NEW_TOKENS_AUTO.get(cfg.profile, NEW_TOKENS_DEFAULT)
    return Plan(target, reference, golden, sel.reason, n, langs, cfg.model)


def _languages(text: str) -> tuple[str, ...]:
    from helpers.models.base import prompts

    known = list(prompts())
    langs = tuple(s.strip() for s in str(text).split(",") if s.strip())
    unknown = [lang for lang in langs if lang not in known]
    if not langs or unknown:
        raise AccuracyError(f"languages {text!r}: unknown {unknown or 'none given'}; "
                            f"data/prompts.json has {', '.join(known)} (e.g. languages = \"en,zh\")")
    return langs


@dataclass(frozen=True)
class Prompt:
    lang: str
    text: str


def load_prompts(languages: tuple[str, ...]) -> list[Prompt]:
    """The shipped prompts (data/prompts.json) of the given languages, in file order."""
    from helpers.models.base import prompts

    table = prompts()
    return [Prompt(lang, text) for lang in languages for text in table[lang]]


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
    components: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # name -> outputs
    inputs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # host copies
    inputs_note: dict[str, str] = field(default_factory=dict)  # name -> what the inputs are
    errors: dict[str, str] = field(default_factory=dict)  # part -> "TypeError: ..."
    seconds: dict[str, float] = field(default_factory=dict)  # part -> synchronized seconds
    parameters: int = 0

    def failed(self, *parts: str) -> str:
        """'' when the parts ran; else the first error, named with side and part."""
        for part in ("load", *parts):
            if part in self.errors:
                return f"{self.side.role} ({self.side.label}) {part}: {self.errors[part]}"
        return ""


def _host(x: torch.Tensor, side: Side) -> torch.Tensor:
    """A detached host copy: float64 for a float64 side, float32 otherwise (bf16 -> f32 is exact)."""
    dtype = torch.float64 if side.dtype == torch.float64 else torch.float32
    return x.detach().to("cpu", dtype)


def _part(run: SideRun, be: Any, name: str, fn: Callable[[], None]) -> None:
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


def forward_prompts(run: SideRun, loaded: Any, prompts: list[Prompt], hidden: bool = True,
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


def greedy(loaded: Any, prompts: list[Prompt], new_tokens: int) -> torch.Tensor:
    """Greedy decoding of exactly new_tokens tokens for all prompts in one left-padded batch:
    [P, N]. EOS is suppressed (min_new_tokens = N) so every row has N comparable tokens."""
    from transformers import GenerationConfig

    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise AccuracyError("the tokenizer has neither a pad nor an eos token; batched greedy "
                            "generation needs one (set pad_token in tokenizer_config.json)")
    enc = tok([p.text for p in prompts], return_tensors="pt", padding=True, padding_side="left")
    dev = loaded.input_device("lm")
    gen = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           num_beams=1, pad_token_id=pad, eos_token_id=tok.eos_token_id)
    out = loaded.lm.generate(input_ids=enc["input_ids"].to(dev),
                             attention_mask=enc["attention_mask"].to(dev), generation_config=gen)
    return out[:, enc["input_ids"].shape[1]:].cpu()  # [P, N]


def first_tensor(out: Any) -> torch.Tensor:
    """The main output of a module: a tensor, a ModelOutput's first field, a tuple's first item."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"cannot find the output tensor in a {type(out).__name__}")


def audio_components(loaded: Any) -> list[str]:
    """Every component of the recipe except the language model (compared through its logits)."""
    return [name for name in loaded.components if name != "lm"]


def component_inputs(loaded: Any) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """Host copies of the inputs each audio component is compared on, and what they are.

    A Whisper-style encoder (config with num_mel_bins and max_source_positions, taking
    input_features) gets the log-mel of a shipped speech fixture, zero-padded to its window;
    every other component gets the recipe's example inputs (seeded)."""
    inputs, notes = {}, {}
    for name in audio_components(loaded):
        kwargs = {k: v.detach().cpu() for k, v in loaded.example_inputs(name).items()}
        notes[name] = "recipe example inputs"
        typed = _audio_part(name)
        if typed is not None:
            fixture = getattr(typed, "DEFAULT_FIXTURE", "")
            notes[name] += f" (made from fixture {fixture})" if fixture else ""
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


def run_component(loaded: Any, name: str, kwargs: dict[str, torch.Tensor], side: Side,
                  reference: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One forward of a component on inputs moved to its device and cast to its dtype:
    named outputs on the host. A codec decodes the reference's codes (when given), so its
    decoder is compared on equal input."""
    module = loaded.components[name]
    dev = loaded.input_device(name)
    moved = {k: v.to(dev, side.dtype) if v.is_floating_point() else v.to(dev)
             for k, v in kwargs.items()}
    typed = _audio_part(name)
    if typed is None:
        outs = {"output": first_tensor(module(**moved))}
    else:
        outs = typed.run(name, module, moved, codes=(reference or {}).get("codes"))
    return {k: _host(v, side) if v.is_floating_point() else v.detach().cpu()
            for k, v in outs.items()}


def collect_loaded(loaded: Any, side: Side, prompts: list[Prompt], new_tokens: int,
                   inputs: dict[str, dict[str, torch.Tensor]] | None = None,
                   again: bool = False, reference: SideRun | None = None) -> SideRun:
    """Run every part on an already-loaded model. `inputs` are the component inputs to use
    (None: make them here, from this side, as the reference does); `again` repeats the forward
    and the generation for the determinism check; `reference` lends its codec codes."""
    run = SideRun(side, parameters=loaded.parameters_total)
    be = devices.backend(devices.select(str(side.device)))
    with torch.inference_mode():
        _part(run, be, "forward", lambda: run.logits.extend(forward_prompts(run, loaded, prompts)))
        if again:
            _part(run, be, "forward again", lambda: run.again_logits.extend(
                forward_prompts(run, loaded, prompts, hidden=False)))
        if inputs is None:
            _part(run, be, "inputs", lambda: _keep_inputs(run, loaded))
        else:
            run.inputs = inputs
        for name in audio_components(loaded):
            if name in run.inputs:
                ref_out = reference.components.get(name) if reference else None
                _part(run, be, name, lambda n=name, r=ref_out: run.components.__setitem__(
                    n, run_component(loaded, n, run.inputs[n], side, r)))
    if new_tokens and side.role != "golden":
        _part(run, be, "generate", lambda: setattr(run, "tokens", greedy(loaded, prompts, new_tokens)))
        if run.tokens is not None:
            run.texts = [loaded.tokenizer.decode(row) for row in run.tokens]
        if again:
            _part(run, be, "generate again",
                  lambda: setattr(run, "again_tokens", greedy(loaded, prompts, new_tokens)))
    return run


def _keep_inputs(run: SideRun, loaded: Any) -> None:
    run.inputs, run.inputs_note = component_inputs(loaded)


def load_side(cfg: Any, side: Side) -> Any:
    """Load the recipe for one side: the target as configured; CPU sides whole on the CPU."""
    from helpers import models

    side_cfg = cfg if side.role == "target" else dataclasses.replace(cfg, device="cpu",
                                                                     device_map="")
    loaded = models.get(cfg.model).load(side_cfg, device=side.device, dtype=side.dtype)
    for module in loaded.components.values():
        module.eval()
    return loaded


def collect(cfg: Any, side: Side, prompts: list[Prompt], new_tokens: int,
            inputs: dict[str, dict[str, torch.Tensor]] | None = None,
            again: bool = False, reference: SideRun | None = None) -> SideRun:
    """Load one side, run every part, free the model; a failed load is recorded, not raised."""
    be = devices.backend(devices.select(str(side.device)))
    try:
        with be.timer() as t:
            loaded = load_side(cfg, side)
    except Exception as exc:
        run = SideRun(side)
        run.errors["load"] = f"{type(exc).__name__}: {exc}"
        return run
    run = collect_loaded(loaded, side, prompts, new_tokens, inputs, again, reference)
    run.seconds["load"] = round(t.seconds, 4)
    del loaded
    gc.collect()
    be.empty_cache()
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

    @property
    def sides(self) -> list[SideRun]:
        return [r for r in (self.reference, self.target, self.golden) if r is not None]

    def timings(self) -> pd.DataFrame:
        """Seconds per side and part (device-synchronized timer)."""
        rows = [{"side": r.side.role, "config": r.side.label, "part": part, "seconds": s}
                for r in self.sides for part, s in r.seconds.items()]
        return pd.DataFrame(rows)

    def timing_protocol(self) -> str:
        be = devices.backend(devices.select(str(self.plan.target.device)))
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


def run_all(cfg: Any, p: Plan) -> Runs:
    """Reference, then target (twice for determinism), then the golden when wanted."""
    prompts = load_prompts(p.languages)
    ref = collect(cfg, p.reference, prompts, p.new_tokens)
    tgt = collect(cfg, p.target, prompts, p.new_tokens, inputs=ref.inputs, again=True,
                  reference=ref)
    tgt.inputs_note = ref.inputs_note
    use, note = golden_decision(p.golden, ref.parameters)
    if p.reference.dtype == torch.float64:
        use, note = False, "no separate golden: the reference itself runs in float64"
    gold = (collect(cfg, p.golden_side, prompts, 0, inputs=ref.inputs, reference=ref)
            if use else None)
    return Runs(p, prompts, ref, tgt, gold, note)


# ---- sections: tables and checks -----------------------------------------------------------

@dataclass
class Section:
    """One part of the stage's report: a table, its checks and its headline metrics."""

    name: str
    table: pd.DataFrame
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def checks_table(checks: list[Check]) -> pd.DataFrame:
    """Checks as the report's summary table: value, threshold, verdict and source."""
    verdict = {True: "PASS", False: "FAIL", None: "info"}
    return pd.DataFrame([{"check": c.name, "value": _show(c.value), "threshold": c.threshold,
                          "verdict": verdict[c.passed], "source": c.source, "detail": c.detail}
                         for c in checks],
                        columns=["check", "value", "threshold", "verdict", "source", "detail"])


# Column headings as the report prints them (the frames keep their snake_case keys)
HEADINGS = {
    "rel_l2_pct": "rel L2 (%)", "max_abs": "max abs", "mean_abs": "mean abs",
    "mean_rel": "mean rel", "top1_pct": "top-1 (%)", "top5_overlap": "top-5 (of 5)",
    "kl": "KL (nats)", "within_tol_pct": "within tol (%)", "nonfinite": "NaN/Inf",
    "msprobe_rule": "msprobe rule", "increase_pct": "increase (points)",
    "target_vs_golden_pct": "target vs f64 (%)", "reference_vs_golden_pct": "reference vs f64 (%)",
    "target_rel_l2_pct": "target rel L2 (%)", "reference_rel_l2_pct": "reference rel L2 (%)",
    "target_rmse": "target RMSE", "reference_rmse": "reference RMSE", "rmse_ratio": "RMSE ratio",
    "mean_rel_ratio": "mean rel ratio", "max_rel_ratio": "max rel ratio",
    "agreement_pct": "agreement (%)", "match_pct": "match (%)",
    "first_divergence": "first divergence", "max_abs_difference": "max abs difference",
    "bitwise_equal": "bitwise equal",
}
RULE_NAMES = {"logits_float32": "the GPA report's float32 thresholds",
              "network": "msprobe's whole-network rule"}
HIDDEN = {"logits": ("mean_abs", "within_tol_pct", "nonfinite")}  # in the summary instead


def display_frame(sec: Section) -> Any:
    """A section's table as the report shows it: readable headings, 4 significant digits
    (a KL of 5.6e-07 must not print as 0.000001), cosines to 7, empty cells for NaN."""
    from helpers.stage import table

    frame = sec.table if not sec.table.empty else checks_table(sec.checks)
    frame = frame.drop(columns=[c for c in HIDDEN.get(sec.name, ()) if c in frame])
    floats = [c for c in frame.select_dtypes("float").columns if c != "cosine"]
    frame = frame.rename(columns=HEADINGS)
    styled = table(frame).format("{:.4g}", subset=[HEADINGS.get(c, c) for c in floats],
                                 na_rep="")
    if "cosine" in frame:
        styled = styled.format("{:.7g}", subset=["cosine"], na_rep="")
    return styled


def record(st: Any, sec: Section) -> Any:
    """Add a section's checks and metrics to the stage; return its table styled for display."""
    for c in sec.checks:
        st.add(c)
    if sec.metrics:
        st.metric(sec.name, sec.metrics)
    return display_frame(sec)


def _show(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def _info(name: str, value: Any, note: str, source: str, detail: str = "") -> Check:
    return Check(name, value, note, None, source, detail)


def _failed(section: str, why: str) -> Section:
    """A section that could not be computed: one failed check that says why."""
    check = Check(f"{section}: computed", False, "all sides ran", False,
                  "stage contract: failures are data", why)
    return Section(section, pd.DataFrame(), [check], {"error": why})


def _verdict(cmp: parity.Comparison) -> str:
    ok, why = parity.network_verdict(cmp)
    return "PASS" if ok else f"FAIL ({why})"


def _network_check(name: str, cmp: parity.Comparison) -> Check:
    ok, why = parity.network_verdict(cmp)
    th = parity.thresholds()["network"]
    return Check(name, f"cosine {cmp.cosine:.8f}, max abs {cmp.max_abs:.3g}", th["rule"], ok,
                 parity.source(th["source"]), why)


def _rules(dtype: str) -> list[str]:
    table = parity.thresholds()["parity_rules"]
    return table.get(dtype, table["float32"] if dtype == "float64" else table["bfloat16"])


# -- logits

def _logit_row(p: Prompt, t: torch.Tensor, r: torch.Tensor, dtype: str) -> dict[str, Any]:
    cmp = parity.compare(t, r, dtype)
    top1, top5 = parity.topk_agreement(t, r, 5)
    return {"lang": p.lang, "prompt": p.text, "tokens": int(t.shape[0]),
            "rel_l2_pct": 100 * cmp.rel_l2, "cosine": cmp.cosine, "max_abs": cmp.max_abs,
            "mean_abs": cmp.mean_abs, "top1_pct": 100 * top1, "top5_overlap": top5,
            "kl": parity.kl_divergence(r, t), "within_tol_pct": 100 * cmp.within_tol,
            "nonfinite": cmp.nonfinite, "msprobe_rule": _verdict(cmp)}


def logits_section(runs: Runs) -> Section:
    """Per-prompt table; pooled summary (all prompts and positions) judged by the target dtype's
    rules: the GPA report's thresholds for float32, msprobe's whole-network rule always."""
    why = runs.target.failed("forward") or runs.reference.failed("forward")
    if why:
        return _failed("logits", why)
    t, r, dtype = runs.target, runs.reference, runs.plan.target.dtype_name
    rows = [_logit_row(p, tl, rl, dtype) for p, tl, rl in zip(runs.prompts, t.logits, r.logits,
                                                                strict=True)]
    tc, rc = torch.cat(t.logits), torch.cat(r.logits)  # [sum S, V]
    cmp = parity.compare(tc, rc, dtype)
    top1, top5 = parity.topk_agreement(tc, rc, 5)
    summary = {"rel_l2_pct": 100 * cmp.rel_l2, "cosine": cmp.cosine,
               "top1_agreement_pct": 100 * top1, "top5_overlap": top5,
               "max_abs": cmp.max_abs, "mean_abs": cmp.mean_abs,
               "kl": parity.kl_divergence(rc, tc), "within_tol_pct": 100 * cmp.within_tol,
               "nonfinite": cmp.nonfinite, "positions": int(tc.shape[0]), "prompts": len(rows)}
    checks = _logit_checks(summary, cmp, rows, dtype)
    note = (f"{len(rows)} prompts, {summary['positions']} positions, vocabulary "
            f"{tc.shape[-1]:,}: target `{runs.plan.target.label}` vs reference "
            f"`{runs.plan.reference.label}`. Judged by "
            f"{' and '.join(RULE_NAMES[r] for r in _rules(dtype) if r in RULE_NAMES)}.")
    return Section("logits", pd.DataFrame(rows), checks, summary, note)


def _logit_checks(summary: dict[str, Any], cmp: parity.Comparison, rows: list[dict[str, Any]],
                  dtype: str) -> list[Check]:
    th, rules = parity.thresholds(), _rules(dtype)
    checks = [_network_check("logits: msprobe whole-network rule", cmp),
              Check.judge("logits: NaN/Inf values in the target", summary["nonfinite"], "==", 0,
                          parity.source("msprobe-network")),
              Check.judge("logits: prompts within the whole-network rule",
                          sum(row["msprobe_rule"] == "PASS" for row in rows), "==", len(rows),
                          parity.source("msprobe-network"))]
    for key, rule in th["logits_float32"].items():
        name = f"logits: {LOGIT_LABELS.get(key, key)}"
        if "logits_float32" in rules:
            checks.append(Check.judge(name, summary[key], rule["op"], rule["limit"],
                                      parity.source(rule["source"])))
        else:
            checks.append(_info(name, summary[key], f"info at {dtype} (float32: {rule['op']} "
                                f"{rule['limit']})", parity.source(rule["source"])))
    tol = parity.tolerance(dtype)
    checks += [_info("logits: KL(reference || target), nats", summary["kl"], "info", "measured"),
               _info("logits: max abs error", summary["max_abs"], "info", "measured"),
               _info("logits: elements within the dtype tolerance (%)", summary["within_tol_pct"],
                     f"info (rtol {tol.rtol:.3g}, small {tol.small_value:.3g})", tol.source)]
    return checks


# -- hidden states, layer by layer

def layer_frame(runs: Runs) -> pd.DataFrame:
    """Per hidden state (embeddings, each layer): target vs reference pooled over prompts, the
    increase of relative L2 over the state before, and each side against the golden."""
    t, r, g = runs.target, runs.reference, runs.golden
    th, rh = torch.cat(t.hidden, dim=1), torch.cat(r.hidden, dim=1)  # [L+1, sum S, H]
    gh = torch.cat(g.hidden, dim=1) if g is not None and not g.failed("forward") else None
    dtype = runs.plan.target.dtype_name
    rows, prev = [], 0.0
    for i, name in enumerate(r.layer_names):
        cmp = parity.compare(th[i], rh[i], dtype)
        row = {"index": i, "state": name, "rel_l2_pct": 100 * cmp.rel_l2, "cosine": cmp.cosine,
               "max_abs": cmp.max_abs, "increase_pct": 100 * (cmp.rel_l2 - prev),
               "nonfinite": cmp.nonfinite}
        if gh is not None:
            row["target_vs_golden_pct"] = 100 * parity.rel_l2(th[i], gh[i])
            row["reference_vs_golden_pct"] = 100 * parity.rel_l2(rh[i], gh[i])
        rows.append(row)
        prev = cmp.rel_l2
    return pd.DataFrame(rows)


def largest_increase(frame: pd.DataFrame) -> tuple[int, str, float]:
    """(index, name, increase in %) of the state that adds the most relative error; a
    non-finite error counts as the largest."""
    inc = frame["increase_pct"].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(frame["rel_l2_pct"].to_numpy(dtype=np.float64))
    i = int(np.argmax(bad)) if bad.any() else int(np.nanargmax(inc))
    return i, str(frame["state"].iloc[i]), float(inc[i])


def layers_section(runs: Runs) -> Section:
    why = runs.target.failed("forward") or runs.reference.failed("forward")
    if why:
        return _failed("layers", why)
    frame = layer_frame(runs)
    i, name, inc = largest_increase(frame)
    last = frame.iloc[-1]
    metrics = {"largest_increase_state": name, "largest_increase_index": i,
               "largest_increase_pct": inc, "final_rel_l2_pct": float(last["rel_l2_pct"]),
               "rel_l2_pct": frame["rel_l2_pct"].tolist()}
    checks = [_info("layers: state that adds the most error", name, "info", "measured",
                    f"relative L2 rises by {inc:.4g} percentage points there"),
              _info("layers: relative L2 of the last hidden state (%)",
                    float(last["rel_l2_pct"]), "info", "measured")]
    nonfinite = int(frame["nonfinite"].sum())
    checks.append(Check.judge("layers: NaN/Inf values in the target's hidden states", nonfinite,
                              "==", 0, parity.source("msprobe-network")))
    note = (f"Relative L2 of target vs reference per hidden state, pooled over "
            f"{len(runs.prompts)} prompts. The error grows most at **{name}** "
            f"(+{inc:.4g} points).")
    return Section("layers", frame, checks, metrics, note)


def layer_figure(frame: pd.DataFrame, title: str = "") -> Any:
    """Relative L2 (%) per hidden state: target vs reference, and each side vs the golden."""
    from helpers import plots

    fig, ax = plots.figure(width=max(6.0, 0.35 * len(frame) + 3))
    if frame.empty:  # the section failed: say so instead of drawing nothing
        ax.text(0.5, 0.5, "hidden states not compared (see the failed check)", ha="center",
                va="center", transform=ax.transAxes)
        return fig
    x = frame["index"].to_numpy()
    series = [("rel_l2_pct", "target vs reference", "-", "o")]
    if "target_vs_golden_pct" in frame:
        series += [("target_vs_golden_pct", "target vs float64 golden", "--", "^"),
                   ("reference_vs_golden_pct", "reference vs float64 golden", ":", "s")]
    values = np.concatenate([frame[c].to_numpy(dtype=np.float64) for c, *_ in series])
    positive = values[np.isfinite(values) & (values > 0)]
    for col, label, style, marker in series:
        y = frame[col].to_numpy(dtype=np.float64)
        ax.plot(x, np.where(y > 0, y, np.nan) if positive.size else y, style, marker=marker,
                label=label, markersize=4)
    if positive.size:
        ax.set_yscale("log")
    i, name, _ = largest_increase(frame)
    ax.axvline(i, color="#c62828", alpha=0.4, lw=6, label=f"largest increase: {name}")
    ax.set_xticks(x, frame["state"], rotation=45 if len(x) > 6 else 0, ha="right" if len(x) > 6
                  else "center", fontsize=8)
    ax.set_ylabel("relative L2 (%)")
    ax.set_title(title or "Hidden-state error by layer")
    ax.legend(loc="best")
    return fig


# -- golden

def golden_section(runs: Runs) -> Section:
    """Target and reference each against the float64 golden; msprobe's error ratios, judged
    when target and reference share a dtype (the benchmark standard's setting)."""
    g = runs.golden
    if g is None:
        return Section("golden", pd.DataFrame(), [_info("golden: float64 comparison", "not run",
                                                        "info", "stage knob golden",
                                                        runs.golden_note)], {}, runs.golden_note)
    why = g.failed("forward") or runs.target.failed("forward") or runs.reference.failed("forward")
    if why:
        return _failed("golden", why)
    pairs = [("logits", torch.cat(runs.target.logits), torch.cat(runs.reference.logits),
              torch.cat(g.logits))]
    pairs.append(("last hidden state", torch.cat([h[-1] for h in runs.target.hidden]),
                  torch.cat([h[-1] for h in runs.reference.hidden]),
                  torch.cat([h[-1] for h in g.hidden])))
    for name, outs in g.components.items():
        t, r = runs.target.components.get(name, {}), runs.reference.components.get(name, {})
        for key, out in outs.items():
            if key in t and key in r and out.is_floating_point():
                label = name if key == "output" else f"{name} {key}"
                pairs.append((label, t[key], r[key], out))
    same = runs.plan.target.dtype == runs.plan.reference.dtype
    rows, checks = [], []
    for name, t, r, gold in pairs:
        row, check = _golden_row(name, t, r, gold, runs.plan, same)
        rows.append(row)
        checks.append(check)
    return Section("golden", pd.DataFrame(rows), checks, {"note": runs.golden_note,
                                                          "rows": rows}, runs.golden_note)


def _golden_row(name: str, t: torch.Tensor, r: torch.Tensor, gold: torch.Tensor, p: Plan,
                judged: bool) -> tuple[dict[str, Any], Check]:
    dtype = p.reference.dtype_name
    tg, rg = parity.compare(t, gold, dtype), parity.compare(r, gold, dtype)
    ratios = parity.error_ratios(t, r, gold, dtype)
    row = {"output": name, "target_rel_l2_pct": 100 * tg.rel_l2,
           "reference_rel_l2_pct": 100 * rg.rel_l2, "target_rmse": tg.rmse,
           "reference_rmse": rg.rmse, "rmse_ratio": ratios["rmse"],
           "mean_rel_ratio": ratios["mean_rel"], "max_rel_ratio": ratios["max_rel"]}
    limits = parity.thresholds()["error_ratio"]
    rule = ", ".join(f"{k} <= {v['max']:g}" for k, v in limits.items())
    src = parity.source(limits["rmse"]["source"])
    detail = ", ".join(f"{k} {v:.3g}" for k, v in ratios.items())
    if judged:
        ok = parity.ratios_pass(ratios)
        row["verdict"] = "PASS" if ok else "FAIL"
        return row, Check(f"golden: {name} error ratio", detail, rule, ok, src)
    row["verdict"] = "info"
    return row, _info(f"golden: {name} error ratio", detail,
                      f"info: target {p.target.dtype_name} vs reference {dtype} ({rule} applies "
                      "to equal dtypes)", src)


# -- greedy generation

def divergence(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int | None]:
    """(matching positions, first position where the two token rows differ, or None)."""
    same = (a == b).tolist()
    first = next((i for i, s in enumerate(same) if not s), None)
    return int(sum(same)), first


def generation_section(runs: Runs) -> Section:
    n = runs.plan.new_tokens
    if n == 0:
        return Section("generation", pd.DataFrame(), [], {}, "new_tokens = 0: no generation")
    why = runs.target.failed("generate") or runs.reference.failed("generate")
    if why:
        return _failed("generation", why)
    rows = []
    for i, p in enumerate(runs.prompts):
        match, first = divergence(runs.target.tokens[i], runs.reference.tokens[i])
        rows.append({"lang": p.lang, "prompt": p.text, "match": f"{match}/{n}",
                     "match_pct": 100 * match / n, "first_divergence": first,
                     "target": runs.target.texts[i], "reference": runs.reference.texts[i]})
    frame = pd.DataFrame(rows)
    identical = int(frame["first_divergence"].isna().sum())
    firsts = frame["first_divergence"].dropna()
    metrics = {"new_tokens": n, "match_pct": float(frame["match_pct"].mean()),
               "prompts_identical": identical, "prompts": len(rows),
               "earliest_divergence": int(firsts.min()) if len(firsts) else None}
    checks = [_info("generation: greedy tokens matching the reference (%)", metrics["match_pct"],
                    "info", "measured", f"{n} new tokens per prompt, EOS suppressed"),
              _info("generation: prompts with identical greedy tokens",
                    f"{identical}/{len(rows)}", "info", "measured")]
    note = (f"Greedy decoding of {n} new tokens per prompt in one left-padded batch, on the "
            "target and on the reference. After the first divergence the two sides continue "
            "from different prefixes, so later matches are not comparable position by position.")
    return Section("generation", frame, checks, metrics, note)


# -- determinism

def determinism_section(runs: Runs) -> Section:
    """The target twice on the same inputs: bitwise-equal logits and identical greedy tokens,
    or how far apart they are."""
    t = runs.target
    why = t.failed("forward", "forward again")
    if why:
        return _failed("determinism", why)
    equal = [torch.equal(a, b) for a, b in zip(t.logits, t.again_logits, strict=True)]
    diff = max(float((a - b).abs().max()) for a, b in zip(t.logits, t.again_logits, strict=True))
    rows = [{"output": "logits (forward twice)", "identical": f"{sum(equal)}/{len(equal)} prompts",
             "bitwise_equal": all(equal), "max_abs_difference": diff}]
    checks = [_info("determinism: logits bitwise equal across two runs", all(equal), "info",
                    "measured", f"max abs difference {diff:.3g}")]
    metrics: dict[str, Any] = {"logits_bitwise_equal": all(equal), "logits_max_abs_diff": diff}
    if runs.plan.new_tokens:
        tok_why = t.failed("generate", "generate again")
        if tok_why:
            checks.append(Check("determinism: greedy tokens", False, "both runs", False,
                                "stage contract: failures are data", tok_why))
        else:
            same = (t.tokens == t.again_tokens)  # [P, N]
            pct = 100 * float(same.double().mean())
            rows.append({"output": f"greedy tokens ({runs.plan.new_tokens} per prompt)",
                         "identical": f"{int(same.all(1).sum())}/{len(same)} prompts",
                         "bitwise_equal": bool(same.all()), "max_abs_difference": None})
            rule = parity.thresholds()["determinism"]["tokens_identical_pct"]
            checks.append(Check.judge("determinism: greedy tokens identical across two runs (%)",
                                      pct, rule["op"], rule["limit"], parity.source(rule["source"])))
            metrics["tokens_identical_pct"] = pct
    return Section("determinism", pd.DataFrame(rows), checks, metrics)


# -- audio: front end and components

def frontend_section(p: Plan) -> Section:
    """Whisper log-mel of every shipped fixture on the target device vs the CPU: as computed
    (float32 STFT on the device) and, for a lower-precision target, as the model receives it
    (cast to the target dtype)."""
    from helpers import audio

    spec, dtype = audio.WHISPER, p.target.dtype_name
    tol_dtype = dtype if dtype in ("bfloat16", "float16") else "bfloat16"
    rows = []
    for fx in audio.fixtures():
        try:
            wave = audio.load_fixture(fx.name, spec.sample_rate)
            ref = audio.log_mel(wave, spec, device="cpu")  # [M, N] float32
            dev = audio.log_mel(wave, spec, device=p.target.device)
        except Exception as exc:  # one bad clip is a row, not a crashed stage
            rows.append({"fixture": fx.name, "as": "log-mel", "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append(_frontend_row(fx.name, "float32 on the device", dev, ref, tol_dtype))
        if p.target.dtype != torch.float32:
            rows.append(_frontend_row(fx.name, f"model input ({dtype})", dev.to(p.target.dtype),
                                      ref, tol_dtype))
    frame = pd.DataFrame(rows)
    if "error" in frame and not frame["error"].astype(bool).any():
        frame = frame.drop(columns="error")
    return Section("audio_frontend", frame, _frontend_checks(frame, tol_dtype),
                   _frontend_metrics(frame), _frontend_note(p, spec, tol_dtype))


def _frontend_row(name: str, what: str, t: torch.Tensor, r: torch.Tensor, tol: str,
                  ) -> dict[str, Any]:
    cmp = parity.compare(t, r, tol)
    return {"fixture": name, "as": what, "shape": "x".join(map(str, r.shape)),
            "max_abs": cmp.max_abs, "mean_abs": cmp.mean_abs, "mean_rel": cmp.mean_rel,
            "cosine": cmp.cosine, "within_tol_pct": 100 * cmp.within_tol,
            "nonfinite": cmp.nonfinite, "msprobe_rule": _verdict(cmp), "error": ""}


def _frontend_checks(frame: pd.DataFrame, tol: str) -> list[Check]:
    if "msprobe_rule" not in frame:
        return [Check("audio front end: computed", False, "every fixture", False,
                      "stage contract: failures are data", "; ".join(frame["error"]))]
    ok = frame["msprobe_rule"].eq("PASS")
    rule = parity.thresholds()["frontend"]["within_tol_pct"]
    worst = float(frame["within_tol_pct"].min(skipna=False))
    return [Check.judge("audio front end: rows within the whole-network rule", int(ok.sum()), "==",
                        len(frame), parity.source("msprobe-network"),
                        detail="; ".join(frame.loc[~ok, "fixture"].astype(str))),
            Check.judge(f"audio front end: worst share within {tol} tolerance (%)", worst,
                        rule["op"], rule["limit"], parity.source(rule["source"]))]


def _frontend_metrics(frame: pd.DataFrame) -> dict[str, Any]:
    if "max_abs" not in frame:
        return {"rows": len(frame)}
    return {"rows": len(frame), "max_abs": float(frame["max_abs"].max()),
            "mean_rel": float(frame["mean_rel"].max()),
            "cosine_min": float(frame["cosine"].min()),
            "within_tol_pct_min": float(frame["within_tol_pct"].min())}


def _frontend_note(p: Plan, spec: Any, tol: str) -> str:
    same = p.target.device.type == "cpu"
    extra = (" The target device is the CPU, so the float32 rows compare the CPU with itself "
             "(exactly zero); the model-input rows show the cast to the target dtype."
             if same else "")
    return (f"{spec.name} log-mel (n_fft {spec.n_fft}, hop {spec.hop_length}, {spec.n_mels} "
            f"bins) of every shipped fixture at {spec.sample_rate} Hz, on `{p.target.device}` "
            f"vs the CPU; elements within {tol} tolerance as in the Covo report.{extra}")


def components_section(runs: Runs) -> Section:
    """Each audio component of the recipe on identical inputs, target vs reference: float
    outputs by the whole-network rule, token / code outputs by their agreement."""
    names = list(runs.reference.inputs)
    if not names:
        why = runs.reference.failed("inputs")
        if why:
            return _failed("audio_components", why)
        return Section("audio_components", pd.DataFrame(), [], {},
                       f"The {runs.plan.model} recipe has no audio components (only its "
                       "language model, compared through the logits above).")
    rows, checks = [], []
    for name in names:
        why = runs.target.failed(name) or runs.reference.failed(name)
        if why:
            checks.append(_failed(f"audio component {name}", why).checks[0])
            continue
        t, r = runs.target.components[name], runs.reference.components[name]
        for key in r:
            row, check = _component_row(name, key, t[key], r[key], runs, r.get("lengths"))
            rows.append(row)
            checks.append(check)
    metrics = {f"{row['component']}.{row['output']}": {
        k: row[k] for k in ("rel_l2_pct", "cosine", "agreement_pct") if k in row}
        for row in rows}
    note = ("Each component runs once on the same inputs on both sides (inputs cast to the "
            "side's dtype), so every row is that component's own error, not an accumulated one; "
            "a codec decodes the reference's codes on both sides.")
    return Section("audio_components", pd.DataFrame(rows), checks, metrics, note)


def agreement(t: torch.Tensor, r: torch.Tensor, lengths: torch.Tensor | None = None) -> float:
    """Share (%) of equal elements; for [B, N] ids with per-row lengths [B], only the first
    lengths[b] of row b (the tokens that cover real audio, not the zero padding)."""
    if t.shape != r.shape:
        return 0.0
    same = t == r
    if lengths is not None and same.dim() == 2 and lengths.shape == same.shape[:1]:
        keep = torch.arange(same.shape[1])[None, :] < lengths[:, None].cpu()  # [B, N]
        return 100 * float(same[keep].double().mean()) if keep.any() else 100.0
    return 100 * float(same.double().mean())


def _component_row(name: str, key: str, t: torch.Tensor, r: torch.Tensor, runs: Runs,
                   lengths: torch.Tensor | None = None) -> tuple[dict[str, Any], Check]:
    base = {"component": name, "output": key, "inputs": runs.reference.inputs_note.get(name, ""),
            "shape": "x".join(map(str, r.shape))}
    label = f"audio component {name}" + ("" if key == "output" else f" {key}")
    if not r.is_floating_point():  # token ids / codes: share of equal elements
        pct = agreement(t, r, lengths if key != "lengths" else None)
        rule, dtype = parity.thresholds()["logits_float32"]["top1_agreement_pct"], runs.plan.target.dtype_name
        name_ = f"{label}: agreement (%)"
        src = parity.source(rule["source"]) + " (top-1 agreement rule)"
        check = (Check.judge(name_, pct, rule["op"], rule["limit"], src) if dtype == "float32"
                 else _info(name_, pct, f"info at {dtype} (float32: {rule['op']} {rule['limit']})",
                            src))
        return {**base, "agreement_pct": pct}, check
    cmp = parity.compare(t, r, runs.plan.target.dtype_name)
    row = {**base, "rel_l2_pct": 100 * cmp.rel_l2, "max_abs": cmp.max_abs,
           "mean_abs": cmp.mean_abs, "mean_rel": cmp.mean_rel, "cosine": cmp.cosine,
           "within_tol_pct": 100 * cmp.within_tol, "nonfinite": cmp.nonfinite,
           "msprobe_rule": _verdict(cmp)}
    return row, _network_check(f"{label}: whole-network rule", cmp)


def headline(runs: Runs, sections: list[Section]) -> dict[str, Any]:
    """The figures a reader wants first: what was compared and the main numbers."""
    out: dict[str, Any] = {"compared": f"{runs.plan.target.label} vs {runs.plan.reference.label}"}
    for sec in sections:
        for key in ("rel_l2_pct", "cosine", "top1_agreement_pct", "top5_overlap", "kl",
                    "match_pct", "tokens_identical_pct", "largest_increase_state"):
            if key in sec.metrics and not isinstance(sec.metrics[key], list):
                out[f"{sec.name}.{key}"] = sec.metrics[key]
    return out
