"""The run of the performance stage (target, model, knobs) and the two ways it decodes greedily:
HF generate of exactly N new tokens (dynamic cache), and a minimal greedy loop of decode steps
over a static KV cache; both measured with the one timing protocol."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from helpers import bench, compat
from helpers import device as devices
from helpers.bench import Measurement, Protocol
from helpers.errors import BenchError
from helpers.models.base import LoadedModel
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




def pad_id(tokenizer: Any) -> int:  # a transformers tokenizer
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def lm_inputs(run: Run, batch: int = 1, length: int | None = None) -> dict[str, torch.Tensor]:
    """The recipe's text prompt for the LM, `batch` identical rows; `length` tiles its tokens."""
    inputs = run.loaded.example_inputs("lm", batch=batch)
    ids = inputs["input_ids"]  # [B, S]
    if length is not None:
        reps = math.ceil(length / ids.shape[1])
        ids = ids.repeat(1, reps)[:, :length]  # [B, length]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def generate_fn(lm: torch.nn.Module, inputs: dict[str, torch.Tensor], new_tokens: int,
                pad: int, **extra: Any) -> Callable[[], torch.Tensor]:
    """A call of HF generate: greedy, exactly `new_tokens` new tokens (EOS ignored)."""
    kwargs = dict(do_sample=False, num_beams=1, max_new_tokens=new_tokens,
                  min_new_tokens=new_tokens, pad_token_id=pad, **extra)
    prompt_len = inputs["input_ids"].shape[1]

    def run() -> torch.Tensor:
        out = lm.generate(**inputs, **kwargs)  # [B, S + new_tokens]
        if out.shape[1] - prompt_len != new_tokens:
            raise BenchError(f"generate made {out.shape[1] - prompt_len} new tokens, not "
                            f"{new_tokens}; the model's generation config stops early")
        return out

    run.__name__ = f"generate_{new_tokens}"
    return run


def measure_generate(run: Run, new_tokens: int, protocol: Protocol, batch: int = 1,
                     length: int | None = None, name: str = "", **extra: Any) -> Measurement:
    fn = generate_fn(run.lm, lm_inputs(run, batch, length), new_tokens,
                     pad_id(run.loaded.tokenizer), **extra)
    return bench.measure(fn, run.be, protocol, name=name or fn.__name__)


def decode_rates(ttft: Measurement, e2e: Measurement, new_tokens: int,
                 batch: int = 1) -> dict[str, float]:
    """Derived throughput: decode = the N-1 tokens after the first, per sequence and in total.

    time per output token (TPOT) = (mean e2e - mean TTFT) / (N - 1);
    end-to-end tokens/s = batch x N / mean e2e (the GPA report's definition: 128 / latency).
    """
    decode_s = e2e.stats.mean - ttft.stats.mean
    tpot = decode_s / (new_tokens - 1)
    return {
        "ttft_s": ttft.stats.mean,
        "e2e_s": e2e.stats.mean,
        "tpot_s": tpot,
        "decode_tokens_per_s": batch / tpot if tpot > 0 else math.nan,
        "e2e_tokens_per_s": batch * new_tokens / e2e.stats.mean,
    }


# ---- a minimal greedy loop over a static KV cache ------------------------------------------


def static_decode_fn(lm: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     new_tokens: int) -> tuple[Callable[[], torch.Tensor], torch.Tensor]:
    """(one run of new_tokens - 1 greedy decode steps, the prompt's first token) over a static cache.

    The prompt is prefilled once here, outside any timer, into a StaticCache of prompt +
    new_tokens positions; its greedy token is the first new token. Each run then makes the
    other new_tokens - 1 tokens, one forward of one token per step at cache positions S, S+1,
    ...: a run rewrites the same slots, and attention sees only positions up to the current
    one, so every run decodes the same tokens from the same prefilled cache. Nothing but the
    model's forward and an argmax happens per step (no logits processors, no stopping
    criteria): the decode step itself, as gpt-fast times it.
    """
    from transformers import StaticCache

    ids = inputs["input_ids"]  # [B, S]
    prompt = ids.shape[1]
    cache = StaticCache(config=lm.config, max_cache_len=prompt + new_tokens)
    key = compat.cache_keyword(lm.forward)
    with torch.inference_mode():
        logits = lm(input_ids=ids, use_cache=True,
                    cache_position=torch.arange(prompt, device=ids.device), **{key: cache}).logits
        first = logits[:, -1].argmax(-1)  # [B]
    positions = [torch.tensor([prompt + i], device=ids.device) for i in range(new_tokens - 1)]

    def run() -> torch.Tensor:
        _rewind(cache, prompt)
        tok, out = first, [first]
        with torch.inference_mode():
            for pos in positions:
                logits = lm(input_ids=tok[:, None], cache_position=pos, position_ids=pos[None],
                            use_cache=True, **{key: cache}).logits  # [B, 1, V]
                tok = logits[:, -1].argmax(-1)  # [B]
                out.append(tok)
        return torch.stack(out, dim=1)  # [B, new_tokens]

    run.__name__ = f"static_decode_{new_tokens - 1}_steps"
    return run, first


def _rewind(cache: Any, length: int) -> None:
    """Set a static cache's fill level back to `length` positions (the prefilled prompt).

    transformers >= 5 counts the positions a static layer holds (cumulative_length, a tensor
    with a static address) and writes there; older releases write at the cache_position given.
    """
    for layer in getattr(cache, "layers", []):
        filled = getattr(layer, "cumulative_length", None)
        if isinstance(filled, torch.Tensor):
            filled.fill_(length)
        elif isinstance(filled, int):
            layer.cumulative_length = length


def measure_static_decode(run: Run, new_tokens: int, protocol: Protocol,
                          name: str = "") -> Measurement:
    """The decode step's own speed: new_tokens - 1 greedy steps over a static cache per run."""
    fn, _ = static_decode_fn(run.lm, lm_inputs(run), new_tokens)
    return bench.measure(fn, run.be, protocol, name=name or fn.__name__)
