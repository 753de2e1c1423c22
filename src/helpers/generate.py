"""The one decode loop every stage and task uses (gpt-fast's generate.py shape): prefill the
prompt, then one step per token over a KV cache (dynamic, or static as graph capture needs);
greedy or seeded sampling with the releases' penalties; an optional forced-token mode (teacher
forcing) that feeds given ids and keeps each step's logits; per-token timestamps from
helpers.bench's synchronized clock, so prefill and decode are timed apart.

Why not `generate`: sampling must draw the same random numbers on every side (a device's
generator gives other numbers than the CPU's for one seed), so the uniforms come from one CPU
generator and are mapped through each side's softmax (inverse CDF in float64); time to first
token needs a clock at the first chosen token; and teacher forcing needs the step itself.
Greedy decoding is the argmax of the processed logits, the choice `generate` makes.

Logit processing, in the order transformers' generate applies it (repetition penalty, then
the caller's processors, then temperature, top-k, top-p):
  repetition_penalty  transformers' RepetitionPenaltyLogitsProcessor: every id seen so far in
                      this round (prompt ids and generated ones) has its score divided by the
                      penalty when positive, multiplied when negative
  window_penalty      Covo-Audio's WindowedRepetitionPenaltyLogitsProcessor (example.py:
                      penalty 1.05, window 8): the same rule over the last `window` ids only
  block               ids never chosen (the end tokens while exactly N tokens are wanted, as
                      generate's min_new_tokens masks them), masked on the device first
  temperature, top_k, top_p  transformers' warpers (top-p keeps the smallest set of ids whose
                      probability reaches top_p, always at least one)
Plain greedy without penalties takes the argmax on the device and moves one id per row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from helpers import compat
from helpers.bench import Clock
from helpers.errors import ConfigError


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen, and where the setting comes from."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    window_penalty: float = 1.0
    window: int = 0
    seed: int = 0
    source: str = "greedy"
    # only ids in these [start, end) ranges (and eos) may be chosen: the audio-ids-only
    # constraint of the random-weight profiles (empty: every id, as the releases decode)
    allow: tuple[tuple[int, int], ...] = ()
    block: tuple[int, ...] = ()  # ids never chosen

    def describe(self) -> str:
        parts = [f"repetition penalty {self.repetition_penalty:g}"]
        if self.window:
            parts.append(f"windowed penalty {self.window_penalty:g} over {self.window} ids")
        if self.do_sample:
            parts[:0] = [f"sampling (temperature {self.temperature:g}, top-k {self.top_k or '-'}"
                         f", top-p {self.top_p:g}, seed {self.seed})"]
        else:
            parts[:0] = ["greedy"]
        if self.allow:
            parts.append("restricted to ids " + ", ".join(f"{a}..{b - 1}" for a, b in self.allow)
                         + " and eos")
        return ", ".join(parts) + f" ({self.source})"

    def greedy(self) -> Sampling:
        """The same penalties, choosing the argmax."""
        return replace(self, do_sample=False, source=self.source + "; greedy")

    @property
    def plain(self) -> bool:
        """Greedy with nothing to process (blocked ids aside): the argmax stays on the device."""
        return not (self.do_sample or self.allow or self.repetition_penalty != 1.0
                    or (self.window and self.window_penalty != 1.0))


GREEDY = Sampling()
DECODING = ("greedy", "release")  # the tasks stage knob: greedy everywhere, or each task's own


def check_decoding(mode: str) -> None:
    if mode not in DECODING:
        raise ConfigError(f"tasks.decoding is {mode!r}",
                          f"use one of {', '.join(DECODING)} (release: each task's published "
                          "sampling settings, with a fixed seed)")


def exactly(eos: Iterable[int], s: Sampling = GREEDY) -> Sampling:
    """`s` with the end tokens blocked, so a round makes exactly max_new_tokens ids."""
    return replace(s, block=tuple(sorted({*s.block, *eos})))


# ---- the rules a decode needs from the model and its tokenizer -----------------------------


def pad_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its eos token, else 0 (padded
    positions are masked, so their id never matters)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def eos_ids(lm: Any, tokenizer: Any = None) -> set[int]:
    """Every end token the model's generation config or the tokenizer names."""
    ids: set[int] = set()
    for value in (getattr(getattr(lm, "generation_config", None), "eos_token_id", None),
                  getattr(tokenizer, "eos_token_id", None)):
        ids |= {int(v) for v in (value if isinstance(value, (list, tuple)) else [value])
                if v is not None}
    return ids


def static_cache(lm: torch.nn.Module, length: int) -> Any:
    """A StaticCache of `length` positions for `lm`, on its device and dtype."""
    from transformers import StaticCache

    return StaticCache(config=lm.config, max_cache_len=length)


def rewind(cache: Any, length: int) -> None:
    """Set a static cache's fill level back to `length` positions.

    transformers >= 5 counts the positions a static layer holds (cumulative_length, a tensor
    with a static address) and writes there; older releases write at the cache_position given.
    """
    for layer in getattr(cache, "layers", []):
        filled = getattr(layer, "cumulative_length", None)
        if isinstance(filled, torch.Tensor):
            filled.fill_(length)
        elif isinstance(filled, int):
            layer.cumulative_length = length


# ---- logits -> the next id -------------------------------------------------------------------


def penalize(scores: torch.Tensor, ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' repetition rule on `ids`: positive scores / penalty, negative x penalty."""
    if penalty == 1.0 or not ids.numel():
        return scores
    ids = torch.unique(ids)
    v = scores[ids]
    scores[ids] = torch.where(v < 0, v * penalty, v / penalty)
    return scores


def windowed_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float,
                     window: int) -> torch.Tensor:
    """Covo-Audio's windowed repetition penalty: the rule over the last `window` ids only."""
    return penalize(scores, seen[-window:], penalty) if window else scores


def process(scores: torch.Tensor, seen: torch.Tensor, s: Sampling,
            eos: Iterable[int] = frozenset()) -> torch.Tensor:
    """[V] float64 scores after the penalties and warpers of `s` (see the module docstring)."""
    scores = scores.clone()
    if s.allow:
        keep = torch.zeros_like(scores, dtype=torch.bool)
        for a, b in s.allow:
            keep[a:b] = True
        keep[list(eos)] = True
        scores = scores.masked_fill(~keep, -math.inf)
    scores = penalize(scores, seen, s.repetition_penalty)
    scores = windowed_penalty(scores, seen, s.window_penalty, s.window)
    if not s.do_sample:
        return scores
    scores = scores / s.temperature
    if s.top_k and s.top_k < scores.numel():
        kth = torch.topk(scores, s.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if s.top_p < 1.0:
        order = torch.argsort(scores, descending=True)
        probs = torch.softmax(scores[order], dim=-1)
        drop = torch.cumsum(probs, dim=-1) - probs >= s.top_p  # mass before this id reached p
        drop[0] = False
        scores[order[drop]] = -math.inf
    return scores


def choose(scores: torch.Tensor, s: Sampling, gen: torch.Generator) -> int:
    """argmax, or the inverse-CDF draw of one CPU-generated uniform through softmax(scores)."""
    if not s.do_sample:
        return int(torch.argmax(scores))
    u = float(torch.rand((), generator=gen, dtype=torch.float64))
    cdf = torch.cumsum(torch.softmax(scores, dim=-1), dim=-1)
    return int(min(int(torch.searchsorted(cdf, torch.tensor(u, dtype=cdf.dtype))),
                   scores.numel() - 1))


# ---- the model side: prefill and step ----------------------------------------------------------


class Step:
    """One model's forward over one KV cache: the prompt (prefill), then one id per row.

    Returns the last position's logits [B, V]; a static cache is addressed by explicit
    positions (cache_position, position_ids), a dynamic one grows by itself. A left-padded
    batch (mask [B, S], 0 on the padding) keeps its mask growing by one column per step and
    numbers each row's positions from its first real token, as generate does, so every row
    sees the positions it would see on its own.
    """

    def __init__(self, lm: torch.nn.Module, cache: Any, past: int, static: bool,
                 mask: torch.Tensor | None = None) -> None:
        self.lm, self.cache, self.pos, self.static = lm, cache, past, static
        self.key = compat.cache_keyword(lm.forward)
        self.device = lm.get_input_embeddings().weight.device
        self.mask = None if mask is None else mask.to(self.device)  # [B, past + S] once fed

    def __call__(self, **inputs: torch.Tensor) -> torch.Tensor:
        batch, width = next(iter(inputs.values())).shape[:2]
        extra: dict[str, Any] = {}
        if self.static:
            pos = torch.arange(self.pos, self.pos + width, device=self.device)  # [S]
            extra = {"cache_position": pos, "position_ids": pos[None]}
        if self.mask is not None:
            if self.pos:  # a step: one more real column per row
                ones = self.mask.new_ones(batch, width)
                self.mask = torch.cat([self.mask, ones], dim=1)  # [B, pos + S]
            extra["attention_mask"] = self.mask
            extra["position_ids"] = (self.mask.cumsum(-1) - 1).clamp(min=0)[:, -width:]  # [B, S]
        out = self.lm(**inputs, use_cache=True, logits_to_keep=1, **{self.key: self.cache},
                      **extra)
        self.pos += width
        return out.logits[:, -1]  # [B, V]


@dataclass
class Decoded:
    """The new ids of one round and when each was chosen (clock seconds from the start)."""

    ids: torch.Tensor  # [B, N] on the host
    times: list[float]  # start -> each chosen id; times[0] is prefill + the first choice
    stopped: str  # "eos <id>" | "max_new_tokens" | "forced"
    cache: Any = None  # every token but the last, as generate leaves it
    logits: torch.Tensor | None = field(default=None, repr=False)  # [B, N, V] host, if kept

    @property
    def tokens(self) -> list[int]:
        """The first row's ids."""
        return self.ids[0].tolist()

    @property
    def prefill_s(self) -> float:
        """Time to first token: the prompt's forward and the first choice."""
        return self.times[0]

    @property
    def seconds(self) -> float:
        return self.times[-1]

    @property
    def decode_s(self) -> float:
        """The decode steps alone: first id -> last id (N - 1 steps)."""
        return self.times[-1] - self.times[0]

    def time_at(self, n: int) -> float:
        """Seconds from the start until the n-th id (1-based; the last if fewer)."""
        return self.times[min(n, len(self.times)) - 1] if self.times else math.nan


def _host_logits(logits: torch.Tensor) -> torch.Tensor:
    """[B, V] on the host: float64 stays, every other dtype as float32 (bf16 -> f32 is exact)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return logits.detach().to("cpu", dtype)


@torch.inference_mode()
def decode(lm: torch.nn.Module, first: dict[str, torch.Tensor], max_new_tokens: int,
           s: Sampling = GREEDY, eos: Iterable[int] = (), clock: Clock | None = None, *,
           prompt_ids: torch.Tensor | None = None, cache: Any = None, past: int = 0,
           static: bool = False, forced: torch.Tensor | None = None,
           keep_logits: bool = False) -> Decoded:
    """Decode one round from `first` (input_ids [B, S] or inputs_embeds [B, S, H], and an
    attention_mask [B, S] for a left-padded batch, 0 on the padding: see Step).

    cache: a KV cache a previous round left (past = the tokens it holds) or None for a new
    one (static: a StaticCache of past + S + max_new_tokens positions, else a DynamicCache);
    a static cache handed in is rewound to `past`. prompt_ids [S] (host) are the ids the
    repetition penalty counts (default: first's input_ids). forced [B, N]: teacher forcing,
    feed these ids instead of choosing, and keep every step's logits (keep_logits keeps them
    in free decoding too). The chosen eos is not fed back; a row ends at eos only at batch 1.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens is {max_new_tokens}", "give at least 1")
    width = next(iter(first.values())).shape[1]
    if cache is None:
        cache = static_cache(lm, past + width + max_new_tokens) if static else _dynamic()
    elif _is_static(cache):
        rewind(cache, past)
    first = dict(first)
    mask = first.pop("attention_mask", None)  # [B, S]: a left-padded batch
    if mask is not None and past:
        raise ConfigError("a padded batch continues no earlier round",
                          "decode a padded batch from a new cache (past=0)")
    step = Step(lm, cache, past, _is_static(cache), mask)
    first = {k: v.to(step.device) for k, v in first.items()}
    batch = next(iter(first.values())).shape[0]
    if not s.plain and batch != 1:
        raise ConfigError(f"penalties and sampling decode one row at a time, got batch {batch}",
                          "decode each row on its own, or use plain greedy for a batch")
    if forced is not None and tuple(forced.shape) != (batch, max_new_tokens):
        raise ConfigError(f"forced ids have shape {tuple(forced.shape)}",
                          f"give [batch, max_new_tokens] = [{batch}, {max_new_tokens}]")
    seen = (prompt_ids if prompt_ids is not None else first.get(
        "input_ids", torch.empty(0, dtype=torch.long))).reshape(-1).to("cpu", torch.long)
    eos = set(eos)
    gen = torch.Generator().manual_seed(s.seed)
    clock = clock or Clock()
    ids: list[torch.Tensor] = []  # each [B]
    kept: list[torch.Tensor] = []  # each [B, V]
    times: list[float] = []
    stopped = "forced" if forced is not None else "max_new_tokens"
    clock.start()
    block = torch.tensor(s.block, dtype=torch.long, device=step.device)
    logits = step(**first)  # [B, V]
    for i in range(max_new_tokens):
        if forced is not None or keep_logits:
            kept.append(_host_logits(logits))
        if block.numel():
            logits = logits.index_fill(-1, block, -math.inf)
        if forced is not None:
            nxt = forced[:, i].to(step.device)  # [B]
        elif s.plain:
            nxt = logits.argmax(-1)  # [B]
        else:
            scores = process(logits[0].to("cpu", torch.float64), seen, s, eos)
            nxt = torch.tensor([choose(scores, s, gen)], device=step.device)
        times.append(clock.stamp())
        ids.append(nxt)
        token = int(nxt[0]) if batch == 1 else -1
        if forced is None and token in eos:
            stopped = f"eos {token}"
            break
        seen = torch.cat([seen, torch.tensor([token])]) if batch == 1 else seen
        if i + 1 < max_new_tokens:
            logits = step(input_ids=nxt[:, None])
    return Decoded(torch.stack(ids, dim=1).cpu(), times, stopped, step.cache,
                   torch.stack(kept, dim=1) if kept else None)


def _is_static(cache: Any) -> bool:
    return type(cache).__name__ == "StaticCache"


def _dynamic() -> Any:
    from transformers import DynamicCache

    return DynamicCache()
