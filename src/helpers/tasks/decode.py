"""One token-by-token decoding loop for every task: greedy, or sampling from a fixed seed,
with the repetition penalties the releases use, timed from a synchronized start.

Why a loop of our own and not `generate`: sampling must draw the same random numbers on every
side (a device's generator gives other numbers than the CPU's for one seed), so the uniforms
come from one CPU generator and are mapped through each side's distribution (inverse CDF in
float64); and time to first token needs a clock at the first chosen token. Greedy decoding
is the argmax of the processed logits, the same choice `generate` makes.

Logit processing, in the order transformers' generate applies it (repetition penalty, then
the caller's processors, then temperature, top-k, top-p):
  repetition_penalty  transformers' RepetitionPenaltyLogitsProcessor: every id seen so far in
                      this round (prompt ids and generated ones) has its score divided by the
                      penalty when positive, multiplied when negative
  window_penalty      Covo-Audio's WindowedRepetitionPenaltyLogitsProcessor (example.py:
                      penalty 1.05, window 8): the same rule over the last `window` ids only
  temperature, top_k, top_p  transformers' warpers (top-p keeps the smallest set of ids whose
                      probability reaches top_p, always at least one)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from helpers import compat
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


DECODING = ("greedy", "release")  # the tasks stage knob: greedy everywhere, or each task's own


def check_decoding(mode: str) -> None:
    if mode not in DECODING:
        raise ConfigError(f"tasks.decoding is {mode!r}",
                          f"use one of {', '.join(DECODING)} (release: each task's published "
                          "sampling settings, with a fixed seed)")


@dataclass
class Decoded:
    """New ids of one round and its timings (host clock, from a synchronized start)."""

    tokens: list[int]
    first_token_s: float  # start -> first chosen token on the host
    seconds: float  # start -> last chosen token
    stopped: str  # "eos <id>" or "max_new_tokens"
    cache: Any = None
    times: list[float] = field(default_factory=list)  # start -> each chosen token

    def time_at(self, n: int) -> float:
        """Seconds from the start until the n-th token (1-based; the last if fewer)."""
        return self.times[min(n, len(self.times)) - 1] if self.times else math.nan


def process(scores: torch.Tensor, seen: torch.Tensor, s: Sampling,
            eos: set[int] = frozenset()) -> torch.Tensor:
    """[V] float64 scores after the penalties and warpers of `s` (see the module docstring)."""
    scores = scores.clone()
    if s.allow:
        keep = torch.zeros_like(scores, dtype=torch.bool)
        for a, b in s.allow:
            keep[a:b] = True
        keep[list(eos)] = True
        scores = scores.masked_fill(~keep, -math.inf)
    if s.repetition_penalty != 1.0 and seen.numel():
        ids = torch.unique(seen)
        v = scores[ids]
        scores[ids] = torch.where(v < 0, v * s.repetition_penalty, v / s.repetition_penalty)
    if s.window and s.window_penalty != 1.0 and seen.numel():
        ids = torch.unique(seen[-s.window:])
        v = scores[ids]
        scores[ids] = torch.where(v < 0, v * s.window_penalty, v / s.window_penalty)
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


@torch.inference_mode()
def run(lm: Any, first: dict[str, torch.Tensor], prompt_ids: torch.Tensor, eos: set[int],
        max_new_tokens: int, s: Sampling, synchronize: Any, cache: Any = None,
        past_length: int = 0) -> Decoded:
    """Decode one round from `first` (input_ids [1, S] or inputs_embeds [1, S, H]) with a KV
    cache (a new DynamicCache, or one a previous round left; past_length = its tokens).

    prompt_ids [S] (CPU) are this round's ids for the repetition penalty. The chosen eos is
    not fed back, so a cache handed on holds every token but the last, as generate leaves it.
    """
    from transformers import DynamicCache

    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens is {max_new_tokens}", "give at least 1")
    cache = cache if cache is not None else DynamicCache()
    gen = torch.Generator().manual_seed(s.seed)
    seen = prompt_ids.reshape(-1).to("cpu", torch.long)
    table = lm.get_input_embeddings()
    dev = table.weight.device
    width = next(iter(first.values())).shape[1]
    mask = torch.ones((1, past_length + width), dtype=torch.long, device=dev)
    kwargs = {k: v.to(dev) for k, v in first.items()}
    tokens: list[int] = []
    times: list[float] = []
    stopped = "max_new_tokens"
    synchronize()
    t0 = time.perf_counter()
    cache_arg = compat.cache_keyword(lm.forward)
    for _ in range(max_new_tokens):
        out = lm(**kwargs, attention_mask=mask, use_cache=True, logits_to_keep=1,
                 **{cache_arg: cache})
        scores = out.logits[0, -1].to("cpu", torch.float64)
        nxt = choose(process(scores, seen, s, eos), s, gen)
        times.append(time.perf_counter() - t0)
        tokens.append(nxt)
        if nxt in eos:
            stopped = f"eos {nxt}"
            break
        seen = torch.cat([seen, torch.tensor([nxt])])
        kwargs = {"input_ids": torch.tensor([[nxt]], device=dev)}
        mask = torch.ones((1, mask.shape[1] + 1), dtype=torch.long, device=dev)
    return Decoded(tokens, times[0], times[-1], stopped, cache, times)


def agreement(a: list[int], b: list[int]) -> dict[str, Any]:
    """Token agreement of two sequences: equal positions over the longer length (%), the first
    position where they differ (None when equal), and both lengths."""
    n = max(len(a), len(b))
    same = sum(x == y for x, y in zip(a, b, strict=False))
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                 None if len(a) == len(b) else min(len(a), len(b)))
    return {"agreement_pct": 100.0 * same / n if n else 100.0, "first_divergence": first,
            "tokens_target": len(a), "tokens_reference": len(b), "identical": first is None}
