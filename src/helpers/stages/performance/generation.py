"""The run of the performance stage (target, model, knobs) and its greedy decoding of exactly N
new tokens: the project's decode loop (helpers.generate; prefill and decode timed apart, over a
dynamic or a static KV cache) and, as a labelled comparison, HF generate; all measured with the
one timing protocol."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from helpers import bench, generate
from helpers import device as devices
from helpers.bench import Clock, Measurement, Protocol
from helpers.errors import BenchError
from helpers.models.base import LoadedModel
from helpers.records import LatencyStats
from helpers.stages.kit import Target
from helpers.stages.performance.settings import Settings


@dataclass
class Run:
    """What every section needs: the target (device, backend, dtype), the loaded model, knobs.

    `placed` is the backend over every device of the model's placement (DEVICE_MAP=auto can
    spread it over several): timers synchronize, and memory covers, all of them.
    """

    target: Target
    loaded: LoadedModel
    settings: Settings
    placed: devices.Backend | None = None

    @property
    def sel(self) -> devices.Selection:
        return self.target.selection

    @property
    def be(self) -> devices.Backend:
        return self.placed or self.target.backend

    @property
    def lm(self) -> torch.nn.Module:
        return self.loaded.lm

    @property
    def dtype(self) -> torch.dtype:
        return self.loaded.dtype


def setup(tgt: Target, settings: Settings | None = None) -> Run:
    """Load the recipe's model on the run's target, with the stage's knobs, measured over its
    placement (every device a DEVICE_MAP=auto plan uses)."""
    loaded = tgt.load()
    return Run(tgt, loaded, settings or Settings(),
               placed=tgt.backend.spanning(loaded.placement.values()))


def lm_inputs(run: Run, batch: int = 1, length: int | None = None) -> dict[str, torch.Tensor]:
    """The recipe's text prompt for the LM, `batch` identical rows; `length` tiles its tokens."""
    inputs = run.loaded.example_inputs("lm", batch=batch)
    ids = inputs["input_ids"]  # [B, S]
    if length is not None:
        reps = math.ceil(length / ids.shape[1])
        ids = ids.repeat(1, reps)[:, :length]  # [B, length]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def hf_generate_fn(lm: torch.nn.Module, inputs: dict[str, torch.Tensor], new_tokens: int,
                   pad: int, **extra: Any) -> Callable[[], torch.Tensor]:
    """A call of HF generate, measured as itself (the labelled comparison row, and graph mode's
    own path): greedy, exactly `new_tokens` new tokens (EOS ignored)."""
    kwargs = dict(do_sample=False, num_beams=1, max_new_tokens=new_tokens,
                  min_new_tokens=new_tokens, pad_token_id=pad, **extra)
    prompt_len = inputs["input_ids"].shape[1]

    def run() -> torch.Tensor:
        out = lm.generate(**inputs, **kwargs)  # [B, S + new_tokens]
        if out.shape[1] - prompt_len != new_tokens:
            raise BenchError(f"generate made {out.shape[1] - prompt_len} new tokens, not "
                            f"{new_tokens}; the model's generation config stops early")
        return out

    run.__name__ = f"hf_generate_{new_tokens}"
    return run


class TokenStamps:
    """A streamer for HF generate (its put / end protocol): the run's clock stamps every put,
    the prompt's and then each new token's, so a timed run yields its decode steps."""

    def __init__(self, be: devices.Backend) -> None:
        self.clock, self.times = Clock(be), []

    def start(self) -> None:
        self.times = []
        self.clock.start()

    def put(self, value: Any) -> None:
        self.times.append(self.clock.stamp())

    def end(self) -> None:
        pass

    def steps(self, new_tokens: int) -> list[float]:
        """The seconds of the N - 1 steps between the N new tokens' stamps."""
        return np.diff(np.asarray(self.times[-new_tokens:], dtype=np.float64)).tolist()


def measure_hf_generate(run: Run, new_tokens: int, protocol: Protocol, name: str = "",
                        warm_tokens: int = 0) -> Measurement:
    """HF generate of exactly new_tokens tokens at batch 1, by the protocol, each timed run's
    decode steps stamped (TokenStamps); warm_tokens in 1..N-1 makes each warmup run that many
    tokens (0: N)."""
    inputs, pad = lm_inputs(run), generate.pad_id(run.loaded.tokenizer)
    stamps = TokenStamps(run.be)
    call = hf_generate_fn(run.lm, inputs, new_tokens, pad, streamer=stamps)

    def fn() -> torch.Tensor:
        stamps.start()
        return call()

    fn.__name__ = call.__name__
    warm = ((hf_generate_fn(run.lm, inputs, warm_tokens, pad), f"{warm_tokens} tokens")
            if 0 < warm_tokens < new_tokens else None)
    return bench.measure(fn, run.be, protocol, name=name or fn.__name__, warm=warm,
                         steps=(lambda out: stamps.steps(new_tokens)) if new_tokens > 1 else None)


@dataclass
class DecodeTiming:
    """The decode loop measured by the protocol: each timed run whole (the backend's timer),
    and its two phases by the loop's own clock: prefill (the prompt's forward and the first
    token) and decode (the N - 1 steps after it)."""

    run: Measurement  # one run = N new tokens
    prefill: LatencyStats  # time to first token, per timed run
    decode: LatencyStats  # the N - 1 decode steps, per timed run
    new_tokens: int
    batch: int
    prompt_tokens: int

    def rates(self) -> dict[str, float]:
        """time per output token (TPOT) = mean decode seconds / (N - 1); decode tokens/s =
        batch / TPOT; end-to-end tokens/s = batch x N / mean run (the GPA report's 128 /
        latency); prefill tokens/s = batch x prompt tokens / mean prefill."""
        tpot = self.decode.mean / (self.new_tokens - 1) if self.new_tokens > 1 else math.nan
        return {"ttft_s": self.prefill.mean, "decode_s": self.decode.mean,
                "e2e_s": self.run.stats.mean, "tpot_s": tpot,
                "decode_tokens_per_s": self.batch / tpot if tpot > 0 else math.nan,
                "e2e_tokens_per_s": self.batch * self.new_tokens / self.run.stats.mean,
                "prefill_tokens_per_s": self.batch * self.prompt_tokens / self.prefill.mean}

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run.to_dict(), "prefill": self.prefill.to_dict(),
                "decode": self.decode.to_dict(), "new_tokens": self.new_tokens,
                "batch": self.batch, "prompt_tokens": self.prompt_tokens, **self.rates()}


def measure_decode(run: Run, new_tokens: int, protocol: Protocol, batch: int = 1,
                   length: int | None = None, static: bool = False,
                   name: str = "", warm_tokens: int = 0) -> DecodeTiming:
    """The project's decode loop, greedy, exactly new_tokens tokens (end tokens blocked),
    over a dynamic KV cache or a static one (allocated once, rewound every run).

    Each timed run hands the protocol its N - 1 decode steps (the stable-mean rule reads the
    mean step's CI); warm_tokens in 1..N-1 makes each warmup run that many tokens (0: N).
    """
    ids = lm_inputs(run, batch, length)["input_ids"]  # [B, S]
    s = generate.exactly(generate.eos_ids(run.lm, run.loaded.tokenizer))
    cache = generate.static_cache(run.lm, ids.shape[1] + new_tokens) if static else None
    phases: list[tuple[float, float]] = []

    def once(n: int = new_tokens) -> generate.Decoded:
        d = generate.decode(run.lm, {"input_ids": ids}, n, s, clock=Clock(run.be), cache=cache)
        phases.append((d.prefill_s, d.decode_s))
        return d

    short = 0 < warm_tokens < new_tokens
    warm = (lambda: once(warm_tokens), f"{warm_tokens} tokens") if short else None
    stepped = new_tokens > 1  # a prefill alone (N = 1) has no step: its runs decide
    m = bench.measure(once, run.be, protocol, name=name or f"decode_{new_tokens}", warm=warm,
                      steps=_steps if stepped else None)
    m.output = m.output.ids  # [B, N]
    timed = phases[-m.stats.count:]  # the warmup runs came first
    return DecodeTiming(m, bench.stats([p for p, _ in timed]), bench.stats([d for _, d in timed]),
                        new_tokens, batch, ids.shape[1])


def _steps(d: generate.Decoded) -> list[float]:
    """The seconds of each decode step of one run (N - 1 of them)."""
    return np.diff(np.asarray(d.times, dtype=np.float64)).tolist()
