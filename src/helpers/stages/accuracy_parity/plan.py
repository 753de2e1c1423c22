"""Who is compared with whom: the target, the CPU reference, the float64 golden, and the
workload (prompts, generated tokens) of the accuracy parity stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from helpers.errors import ConfigError
from helpers.models.base import prompts
from helpers.stages.kit import CPU, Side, Target, fit_notes, fitted, reference_side

REFERENCE_DTYPES = ("float32", "float64")
# component_dtype knob: "run" = every audio component in the run's DTYPE; "upstream" = each as
# its upstream code runs it on this device type (helpers.models.audio_components.upstream_dtype:
# BiCodec float16 on CUDA, float32 elsewhere; the GLM tokenizer float32), others in DTYPE
COMPONENT_DTYPES = ("run", "upstream")
GOLDEN_MODES = ("auto", "on", "off")
GOLDEN_MEMORY_SHARE = 0.5  # auto: the float64 copy may use at most half the free host memory
NEW_TOKENS_AUTO = {"tiny": 8}  # new_tokens = 0 picks this per profile ...
NEW_TOKENS_DEFAULT = 64  # ... or this (the Covo report's 64-token greedy runs)
FRONTEND_FIXTURE = "en_fox"  # the clip fed to audio encoders that take log-mel features
PLAYERS_DEFAULT = "en_fox,zh_weather,en_stereo_48k"  # fixtures given players


LOGIT_LABELS = {"rel_l2_pct": "relative L2 (%)", "cosine": "cosine",
                "top1_agreement_pct": "top-1 agreement (%)", "top5_overlap": "top-5 overlap (of 5)"}


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
    tf32: bool = False  # let float32 matmuls / convolutions use TF32 (CUDA) or HF32 (Ascend)
    fixtures: tuple[str, ...] = ()  # the audio fixtures every component runs on (empty: all)
    component_dtype: str = "run"  # see COMPONENT_DTYPES
    profile: str = ""
    decode_batch: int = 0  # prompts per left-padded decode batch (0: all; 1: each on its own)

    def component_dtypes(self, names: list[str]) -> dict[str, torch.dtype]:
        """The target dtype of each audio component under the component_dtype rule."""
        from helpers.models import audio_components as ac

        if self.component_dtype == "run":
            return {n: self.target.dtype for n in names}
        chosen = {n: ac.upstream_dtype(n, self.target.device.type) if n in ac.PARTS else ""
                  for n in names}
        return {n: getattr(torch, c) if c else self.target.dtype for n, c in chosen.items()}

    @property
    def golden_side(self) -> Side:
        return Side("golden", CPU, torch.float64)

    @property
    def baseline_side(self) -> Side | None:
        """The CPU in the target's dtype, when that differs from the reference's: what the
        dtype's own rounding costs, so the target's error is judged with it factored out."""
        if self.target.dtype == self.reference.dtype:
            return None
        return Side("baseline", CPU, self.target.dtype)

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
        lines.extend(fit_notes(r))
        if self.baseline_side is not None:
            lines.append(f"Baseline: the CPU in {t.dtype_name}, fed the same inputs, so the "
                         f"target's error is held to what {t.dtype_name} itself costs.")
        lines.append(f"Workload: prompts in {', '.join(self.languages)}; greedy generation of "
                     f"{self.new_tokens} new tokens, then every other side fed those ids "
                     f"(teacher forcing); {self.batching()}.")
        lines.append("Reduced-precision float32 (TF32 on CUDA, HF32 on Ascend): "
                     + ("**allowed** (knob tf32 = True): float32 differences include it."
                        if self.tf32 else "off for every side (knob tf32 = False), so float32 "
                        "means IEEE float32 on the device as on the CPU."))
        return "\n\n".join(lines)

    def batching(self) -> str:
        """How the prompts are decoded, in words."""
        if self.decode_batch == 1:
            return "each prompt decoded on its own (knob decode_batch = 1)"
        size = "all prompts" if not self.decode_batch else f"{self.decode_batch} prompts"
        return (f"{size} decoded together in one left-padded batch, every side alike "
                "(knob decode_batch; 1 decodes each prompt on its own)")

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target.label, "reference": self.reference.label,
                "golden": self.golden, "reason": self.reason, "new_tokens": self.new_tokens,
                "languages": list(self.languages), "tf32": self.tf32,
                "fixtures": list(self.fixtures), "component_dtype": self.component_dtype,
                "decode_batch": self.decode_batch}


def plan(tgt: Target, reference_dtype: str = "float32", golden: str = "auto",
         new_tokens: int = 0, languages: str = "en,zh", tf32: bool = False,
         fixtures: str = "", component_dtype: str = "run", decode_batch: int = 0) -> Plan:
    """The sides and workload for a run's target and the stage knobs (checked here)."""
    if reference_dtype not in REFERENCE_DTYPES:
        raise ConfigError(f"reference_dtype {reference_dtype!r} is not valid",
                          f"the CPU reference runs in one of {', '.join(REFERENCE_DTYPES)}")
    if golden not in GOLDEN_MODES:
        raise ConfigError(f"golden {golden!r} is not valid",
                          "use auto (when it fits in memory), on or off")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 0:
        raise ConfigError(f"new_tokens must be an integer >= 0, got {new_tokens!r}",
                          "0 means auto (8 on the tiny profile, 64 otherwise)")
    if not isinstance(tf32, bool):
        raise ConfigError(f"tf32 must be True or False, got {tf32!r}",
                          "True lets float32 parity use TF32 (CUDA) / HF32 (Ascend)")
    if component_dtype not in COMPONENT_DTYPES:
        raise ConfigError(f"accuracy_parity.component_dtype is {component_dtype!r}",
                          f"use one of {', '.join(COMPONENT_DTYPES)}")
    if isinstance(decode_batch, bool) or not isinstance(decode_batch, int) or decode_batch < 0:
        raise ConfigError(f"decode_batch must be an integer >= 0, got {decode_batch!r}",
                          "0 decodes all prompts in one left-padded batch, 1 each on its own")
    langs = _languages(languages)
    # the reference the memory free here can hold (REFERENCE_FIT), refused before any load
    reference = fitted(tgt.cfg, reference_side(getattr(torch, reference_dtype)))
    n = new_tokens or NEW_TOKENS_AUTO.get(tgt.cfg.profile, NEW_TOKENS_DEFAULT)
    return Plan(tgt.side, reference, golden, tgt.reason, n, langs, tgt.cfg.model, tf32,
                _fixtures(fixtures), component_dtype, tgt.cfg.profile, decode_batch)


def _fixtures(text: str) -> tuple[str, ...]:
    """The named shipped fixtures, checked ('' = all of them)."""
    from helpers import audio

    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    known = [f.name for f in audio.fixtures()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"fixtures {text!r}: unknown {unknown}",
                          f"data/audio/fixtures.json has {', '.join(known)} (empty: all)")
    return names or tuple(known)


def _languages(text: str) -> tuple[str, ...]:
    known = list(prompts())
    langs = tuple(s.strip() for s in str(text).split(",") if s.strip())
    unknown = [lang for lang in langs if lang not in known]
    if not langs or unknown:
        raise ConfigError(f"languages {text!r}: unknown {unknown or 'none given'}",
                          f"data/prompts.json has {', '.join(known)} (e.g. languages = \"en,zh\")")
    return langs


@dataclass(frozen=True)
class Prompt:
    lang: str
    text: str


def load_prompts(languages: tuple[str, ...]) -> list[Prompt]:
    """The shipped prompts (data/prompts.json) of the given languages, in file order."""
    table = prompts()
    return [Prompt(lang, text) for lang in languages for text in table[lang]]
