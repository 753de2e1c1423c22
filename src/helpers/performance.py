"""Stage 5: what a user will feel, measured with the one timing protocol (helpers.bench).

Sections, each a function returning a Section (table + metrics + checks) for the notebook:
  sanity     a 0.2 s sleep and a known allocation, measured by the stage's own timer / reader
  latency    time to first token (prefill), end-to-end latency for N new tokens (128 as in the
             GPA report), decode throughput and time per output token, peak memory
  bandwidth  weight bytes read per decoded token x tokens/s against the device's memory
             bandwidth measured here (a large copy), and a roofline with a measured matmul roof
  rtf        real-time factor of every audio component (processing time / audio duration)
  modes      plain generate (eager) vs static KV cache with graph capture (torch.compile)
  sweeps     batch 1, 2, 4, 8 (throughput, latency) and prompt length (prefill time)

Generation is always greedy with exactly N new tokens: min_new_tokens = max_new_tokens = N, so
the end-of-sequence token cannot stop a run early (its logit is masked until N tokens exist).
A measurement that fails is a row saying what failed, never a crashed stage.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from helpers import bench, device, models, paths, plots
from helpers.bench import Measurement, Protocol
from helpers.records import Check

MIB = 1024 * 1024
PROTOCOL = "performance stage protocol"
GPA_REPORT = "GPA on Ascend 910 adaptation report (128-token latency, 26.1 tok/s)"
# Audio rates of the inputs the recipes feed their audio components (log-mel frame rates are
# fixed by the front end; waveform and vocoder rates are read from the module's config).
WHISPER_FRAMES_PER_S = 100.0  # log-mel hop 160 samples at 16 kHz (Whisper front end)
WHISPER_POSITIONS_PER_S = 50.0  # Whisper encoder output: 1500 positions per 30 s
DEFAULT_WAVEFORM_RATE = 16_000  # 16 kHz mono input audio (GPA, Covo encoders)
MATMUL_RUN_S = 0.05  # one product of the compute-roof matmul takes at least this long
CACHE_SIZED = 64 * MIB  # weights below this may stay in on-chip caches (L2 / last level)
COMPILE_CACHE = paths.ROOT / ".cache" / "inductor"  # torch.compile artifacts; gitignored


class PerfError(ValueError):
    """A performance knob or a measurement precondition is wrong; the message says the fix."""


# ---- settings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The stage's knobs (notebook parameters); validated on construction."""

    new_tokens: int = 128  # tokens per end-to-end run (the GPA report's 128)
    warmup: int = 1
    min_iters: int = 5
    min_seconds: float = 0.5
    max_iters: int = 200
    max_seconds: float = 60.0
    sweep_min_iters: int = 3
    sweep_min_seconds: float = 0.2
    sweep_batches: tuple[int, ...] = (1, 2, 4, 8)
    sweep_prompt_lengths: tuple[int, ...] = (16, 64, 256, 1024)
    sweep_new_tokens: int = 16
    rtf_min_iters: int = 2  # audio components can be slow on a CPU: fewer timed runs
    graph_mode: bool = True
    graph_cap_s: float = 0.0  # cap on the first graph-mode call (compile); 0 = auto per backend
    copy_mib: int = 256  # size of the bandwidth copy, MiB

    def __post_init__(self) -> None:
        for name in ("sweep_batches", "sweep_prompt_lengths"):
            value = tuple(getattr(self, name))
            if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                    for v in value):
                raise PerfError(f"{name} must be a non-empty list of integers >= 1, got {value!r}")
            object.__setattr__(self, name, value)
        for name in ("new_tokens", "sweep_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise PerfError(f"{name} must be an integer >= 2, got {value!r} (decode "
                                "throughput needs at least one token after the first)")
        if isinstance(self.copy_mib, bool) or not isinstance(self.copy_mib, int) \
                or self.copy_mib < 1:
            raise PerfError(f"copy_mib must be an integer >= 1 (MiB), got {self.copy_mib!r}")
        if not isinstance(self.graph_cap_s, (int, float)) or self.graph_cap_s < 0:
            raise PerfError(f"graph_cap_s must be seconds >= 0 (0 = auto), got {self.graph_cap_s!r}")
        self.protocol()  # validates the protocol knobs
        self.sweep_protocol()
        self.rtf_protocol()

    def protocol(self) -> Protocol:
        return Protocol(warmup=self.warmup, min_iters=self.min_iters,
                        min_seconds=self.min_seconds, max_iters=self.max_iters,
                        max_seconds=self.max_seconds)

    def rtf_protocol(self) -> Protocol:
        return self.sweep_protocol().with_(min_iters=self.rtf_min_iters,
                                           max_iters=max(self.max_iters, self.rtf_min_iters))

    def sweep_protocol(self) -> Protocol:
        return Protocol(warmup=self.warmup, min_iters=self.sweep_min_iters,
                        min_seconds=self.sweep_min_seconds,
                        max_iters=max(self.max_iters, self.sweep_min_iters),
                        max_seconds=self.max_seconds)


# ---- the run: config, device, model -------------------------------------------------------


@dataclass
class Run:
    """What every section needs: the device selection and backend, the loaded model, knobs."""

    sel: device.Selection
    be: device.Backend
    loaded: Any  # helpers.models.base.LoadedModel
    settings: Settings

    @property
    def lm(self) -> torch.nn.Module:
        return self.loaded.lm

    @property
    def dtype(self) -> torch.dtype:
        return self.loaded.dtype


def setup(cfg: Any, settings: Settings | None = None) -> Run:
    """Select the device, resolve the dtype and load the recipe's model for a RunConfig."""
    sel = device.select(cfg.device)
    be = device.backend(sel)
    dtype = device.resolve_dtype(sel, cfg.dtype)
    loaded = models.get(cfg.model).load(cfg, device=sel.device, dtype=dtype, backend=be)
    for module in loaded.components.values():
        module.eval()
    return Run(sel, be, loaded, settings or Settings())


@dataclass
class Section:
    """One part of the stage: a table for the reader, metrics and checks for the results."""

    name: str
    table: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # for later sections, not recorded


def record(st: Any, section: Section) -> Section:
    """Put a section's metrics (under its name) and checks into the Stage recorder."""
    st.metric(section.name, {**section.metrics, "notes": section.notes})
    for check in section.checks:
        st.add(check)
    return section


def attempt(st: Any, name: str, fn: Callable[..., Section], *args: Any) -> Section:
    """Run one section and record it; an exception becomes a failed row and a failed check."""
    try:
        section = fn(*args)
    except Exception as exc:
        row = _failure(name, exc)
        check = Check(f"{name}: section completes", row["error"], "no exception", False, PROTOCOL)
        section = Section(name, pd.DataFrame([row]), {"error": row["error"]}, [check])
    return record(st, section)


def figure(st: Any, name: str, fn: Callable[..., tuple[Any, Any]], *sections: Section) -> Any:
    """Draw and save a figure from sections; None (and nothing saved) if a section failed."""
    if any("error" in s.metrics for s in sections):
        return None
    fig, _ = fn(*sections)
    st.save_figure(fig, name)
    return fig


def _failure(what: str, exc: BaseException) -> dict[str, Any]:
    """A failed measurement as a row: what failed and why (the stage goes on)."""
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno}" if last else ""
    return {"measurement": what, "status": "failed",
            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}{where}"}


# ---- generation -------------------------------------------------------------------------


def pad_id(tokenizer: Any) -> int:
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
            raise PerfError(f"generate made {out.shape[1] - prompt_len} new tokens, not "
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


# ---- sanity -----------------------------------------------------------------------------


def sleep_probe(be: Any, seconds: float = 0.2) -> Measurement:
    """Measure time.sleep(seconds) with the backend's timer (events bracket idle device time)."""
    return bench.measure(lambda: time.sleep(seconds), be,
                         Protocol(warmup=0, min_iters=3, min_seconds=0), name=f"sleep_{seconds}")


def allocation_probe(be: Any, dev: torch.device, nbytes: int = 64 * MIB) -> dict[str, Any]:
    """Allocate and fill `nbytes`; the change the memory reader sees (device bytes, or RSS).

    On cpu the reader is the process RSS: 64 MiB is above glibc's largest mmap threshold
    (32 MiB), so the block is fresh pages that become resident when filled.
    """
    gc.collect()
    be.synchronize()
    before = be.memory()
    key = "allocated" if before["allocated"] is not None else "host_rss"
    block = torch.ones(nbytes // 4, dtype=torch.float32, device=dev)  # every page touched
    be.synchronize()
    after = be.memory()
    measured = after[key] - before[key]
    del block
    return {"reader": key, "expected_bytes": nbytes, "measured_bytes": measured,
            "relative_error": abs(measured - nbytes) / nbytes}


def sanity(run: Run) -> Section:
    """Physical sanity of the stage's own instruments, on the device under test."""
    m = sleep_probe(run.be)
    alloc = allocation_probe(run.be, run.sel.device)
    sleep_err = abs(m.stats.p50 - 0.2) / 0.2  # median: one late wake-up on a busy host is not the timer
    checks = [
        Check.judge("timer: 0.2 s sleep measured within 5%", round(sleep_err, 5), "<=", 0.05,
                    "physical sanity of the timer (optimum-benchmark checks a 1 s sleep at ±10%)",
                    detail=f"median {m.stats.p50:.5f} s (mean {m.stats.mean:.5f} s) over "
                           f"{m.stats.count} runs; {m.timer}"),
        Check.judge(f"memory: {alloc['expected_bytes'] // MIB} MiB allocation measured within 10%",
                    round(alloc["relative_error"], 5), "<=", 0.10, "physical sanity of the memory reader",
                    detail=f"{alloc['reader']} grew {alloc['measured_bytes'] / MIB:.2f} MiB"),
    ]
    table = pd.DataFrame([
        {"probe": "time.sleep(0.2)", "expected": "0.2 s", "measured": f"{m.stats.p50:.5f} s (median)",
         "relative error": sleep_err, "instrument": m.timer},
        {"probe": f"torch.ones({alloc['expected_bytes'] // MIB} MiB)",
         "expected": f"{alloc['expected_bytes'] / MIB:.1f} MiB",
         "measured": f"{alloc['measured_bytes'] / MIB:.2f} MiB",
         "relative error": alloc["relative_error"], "instrument": f"backend.memory()['{alloc['reader']}']"},
    ])
    return Section("sanity", table, {"sleep": m.to_dict(), "allocation": alloc}, checks)


# ---- latency, throughput, memory ----------------------------------------------------------


def latency(run: Run) -> Section:
    """TTFT, N-token latency (batch 1), decode throughput, TPOT, peak memory during the runs."""
    s = run.settings
    p = s.protocol()
    ttft = measure_generate(run, 1, p, name="ttft")
    run.be.reset_peak()
    e2e = measure_generate(run, s.new_tokens, p, name=f"e2e_{s.new_tokens}")
    mem = run.be.memory()
    rates = decode_rates(ttft, e2e, s.new_tokens)
    rows = [_stats_row(f"time to first token (prompt {lm_inputs(run)['input_ids'].shape[1]} tokens)", ttft),
            _stats_row(f"latency, {s.new_tokens} new tokens", e2e)]
    metrics = {"new_tokens": s.new_tokens, "batch": 1, **rates, "memory": mem,
               "ttft": ttft.to_dict(), "e2e": e2e.to_dict(), "protocol": e2e.describe()}
    checks = [Check("decode throughput (tokens/s)", round(rates["decode_tokens_per_s"], 3), "",
                    None, GPA_REPORT, detail=f"GPA on Ascend 910 reported 26.1 tok/s "
                    f"({s.new_tokens}-token end-to-end here: {rates['e2e_tokens_per_s']:.2f} tok/s)")]
    load = host_load()
    metrics["host"] = load
    notes = [f"protocol: {e2e.describe()}"]
    if run.sel.backend == "cpu" and load.get("host_note", "host quiet") != "host quiet":
        notes.append(load["host_note"])
    return Section("latency", pd.DataFrame(rows), metrics, checks, notes=notes,
                   data={"ttft": ttft, "e2e": e2e})


def _stats_row(what: str, m: Measurement) -> dict[str, Any]:
    st = m.stats
    return {"measurement": what, "runs": st.count, "first call s": m.first_call_s,
            "mean s": st.mean, "median s": st.p50, "p90 s": st.p90, "p99 s": st.p99,
            "min s": st.min, "max s": st.max, "stdev s": st.stdev}


def throughput_table(sec: Section) -> pd.DataFrame:
    m = sec.metrics
    return pd.DataFrame([
        {"quantity": "time to first token (prefill)", "value": m["ttft_s"], "unit": "s"},
        {"quantity": "time per output token (decode)", "value": m["tpot_s"] * 1e3, "unit": "ms"},
        {"quantity": "decode throughput", "value": m["decode_tokens_per_s"], "unit": "tokens/s"},
        {"quantity": f"end-to-end throughput ({m['new_tokens']} tokens / latency)",
         "value": m["e2e_tokens_per_s"], "unit": "tokens/s"},
    ])


def memory_table(sec: Section) -> pd.DataFrame:
    """Peak device memory (allocated, reserved) and host RSS around the N-token runs, MiB."""
    mem = sec.metrics["memory"]
    labels = {"peak_allocated": "device peak allocated", "peak_reserved": "device peak reserved",
              "allocated": "device allocated now", "reserved": "device reserved now",
              "host_rss": "host RSS now", "peak_rss_since_reset": "host peak RSS during the runs",
              "peak_rss": "host peak RSS, process lifetime"}
    rows = [{"memory": label, "MiB": None if mem.get(k) is None else mem[k] / MIB,
             "note": "" if mem.get(k) is not None else "not available on this backend"}
            for k, label in labels.items()]
    return pd.DataFrame(rows)


# ---- bandwidth and roofline -----------------------------------------------------------------


def decode_weight_bytes(lm: torch.nn.Module) -> tuple[int, int, str]:
    """(bytes, elements) of weights one decode step reads, and how they were counted.

    Every parameter is read once per step (parameters() yields a tied tensor once). An input
    embedding table that is not tied to the output head is left out: a step reads one row.
    """
    params = list(lm.parameters())
    total = sum(p.numel() * p.element_size() for p in params)
    elems = sum(p.numel() for p in params)
    emb = lm.get_input_embeddings().weight
    head = lm.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == emb.data_ptr()
    if tied:
        return total, elems, "all parameters once (input embedding tied to the output head)"
    return (total - emb.numel() * emb.element_size(), elems - emb.numel(),
            "all parameters except the untied input embedding table (one row read per token)")


def copy_bandwidth(run: Run) -> tuple[Measurement, float]:
    """Device memory bandwidth from dst.copy_(src) of copy_mib MiB: (measurement, bytes/s).

    Bytes per copy = read + write = 2 x size (caches are far smaller than the buffers).
    """
    n = run.settings.copy_mib * MIB
    src = torch.ones(n, dtype=torch.uint8, device=run.sel.device)
    dst = torch.empty_like(src)
    m = bench.measure(lambda: dst.copy_(src), run.be, run.settings.sweep_protocol(),
                      name=f"copy_{run.settings.copy_mib}MiB")
    return m, 2 * n / m.stats.mean


def matmul_flops(run: Run) -> tuple[Measurement, float, int]:
    """Compute roof: an n x n matmul in the model's dtype, FLOP/s = 2 n^3 / time.

    n doubles from 256 while one product takes under MATMUL_RUN_S (up to 8192), so a slow
    dtype on a CPU (bfloat16 without native support) stays quick and a GPU gets a large n.
    """
    n = 256
    while True:
        product = _product(run, n)
        bench.timed(run.be, product)  # first call: library start-up, kernel choice
        _, seconds, _ = bench.timed(run.be, product)
        if seconds >= MATMUL_RUN_S or n >= 8192:
            break
        n *= 2
    m = bench.measure(product, run.be, run.settings.sweep_protocol(), name=f"matmul_{n}")
    return m, 2 * n**3 / m.stats.mean, n


def _product(run: Run, n: int) -> Callable[[], torch.Tensor]:
    a = torch.randn(n, n, device=run.sel.device).to(run.dtype)  # [n, n]
    b = torch.randn(n, n, device=run.sel.device).to(run.dtype)  # [n, n]
    return lambda: a @ b


def bandwidth(run: Run, lat: Section) -> Section:
    """Achieved weight-read bandwidth of batch-1 decode against the measured copy bandwidth."""
    wbytes, welems, how = decode_weight_bytes(run.lm)
    copy_m, copy_bps = copy_bandwidth(run)
    tps = lat.metrics["decode_tokens_per_s"]
    achieved = wbytes * tps
    ratio = achieved / copy_bps
    table = pd.DataFrame([
        {"quantity": "weights read per decoded token", "value": wbytes / 1e6, "unit": "MB", "how": how},
        {"quantity": "decode throughput (batch 1)", "value": tps, "unit": "tokens/s", "how": "latency section"},
        {"quantity": "achieved weight-read bandwidth", "value": achieved / 1e9, "unit": "GB/s",
         "how": "weights per token x tokens/s"},
        {"quantity": "measured device bandwidth (copy)", "value": copy_bps / 1e9, "unit": "GB/s",
         "how": f"{run.settings.copy_mib} MiB copy, (read + write) / time, {copy_m.stats.count} runs"},
        {"quantity": "bandwidth utilization", "value": ratio, "unit": "ratio", "how": "achieved / measured"},
    ])
    metrics = {"weight_bytes_per_token": wbytes, "weight_elements": welems, "counted": how,
               "achieved_bytes_per_s": achieved, "copy_bytes_per_s": copy_bps,
               "utilization": ratio, "copy": copy_m.to_dict()}
    checks = [Check("bandwidth utilization (decode, batch 1)", round(ratio, 4), "", None,
                    "informational (gpt-fast reports achieved GB/s the same way)",
                    detail=f"{achieved / 1e9:.3f} GB/s of {copy_bps / 1e9:.2f} GB/s measured")]
    notes = ["KV-cache reads and activations are not counted: at batch 1 and short contexts "
             "they are small next to the weights"]
    if wbytes < CACHE_SIZED:
        notes.append(f"the weights ({wbytes / 1e6:.2f} MB) fit in on-chip caches: decode then "
                     "reads them from cache, not device memory, so this ratio says little")
    return Section("bandwidth", table, metrics, checks, notes=notes,
                   data={"weight_bytes": wbytes, "weight_elements": welems, "copy_bps": copy_bps})


def bandwidth_figure(sec: Section) -> tuple[Any, Any]:
    m = sec.metrics
    fig, ax = plots.bars(["measured copy", "decode weight reads"],
                         [m["copy_bytes_per_s"] / 1e9, m["achieved_bytes_per_s"] / 1e9],
                         f"Memory bandwidth: utilization {m['utilization']:.1%}", "GB/s")
    return fig, ax


def roofline(run: Run, bw: Section, sweep: Section) -> Section:
    """Decode points of the batch sweep under the measured bandwidth and matmul roofs.

    Per decoded token the matmuls do 2 FLOP per weight element read; at batch B the same weights
    serve B tokens, so intensity = 2 x elements x B / weight bytes (attention FLOPs left out).
    """
    mm, peak_flops, n = matmul_flops(run)
    bps, elems, wbytes = bw.data["copy_bps"], bw.data["weight_elements"], bw.data["weight_bytes"]
    rows = []
    for r in sweep.data["batch_rows"]:
        intensity = 2 * elems * r["batch"] / wbytes  # FLOP / byte
        achieved = 2 * elems * r["decode tokens/s (all)"]  # FLOP / s
        roof = min(bps * intensity, peak_flops)
        rows.append({"batch": r["batch"], "intensity FLOP/B": intensity,
                     "achieved GFLOP/s": achieved / 1e9, "roof GFLOP/s": roof / 1e9,
                     "fraction of roof": achieved / roof})
    metrics = {"peak_flops": peak_flops, "matmul_n": n, "matmul": mm.to_dict(),
               "ridge_intensity": peak_flops / bps, "points": rows}
    return Section("roofline", pd.DataFrame(rows), metrics,
                   notes=[f"compute roof: {n}x{n} matmul in {str(run.dtype).replace('torch.', '')}"])


def roofline_figure(sec: Section, bw: Section) -> tuple[Any, Any]:
    m = sec.metrics
    bps, peak = bw.metrics["copy_bytes_per_s"], m["peak_flops"]
    pts = m["points"]
    lo = min(min(p["intensity FLOP/B"] for p in pts), m["ridge_intensity"]) / 4
    hi = max(max(p["intensity FLOP/B"] for p in pts), m["ridge_intensity"]) * 4
    xs = [lo * (hi / lo) ** (i / 100) for i in range(101)]
    fig, ax = plots.figure()
    ax.plot(xs, [min(bps * x, peak) / 1e9 for x in xs], color="#546e7a", label="measured roof")
    for p in pts:
        ax.scatter(p["intensity FLOP/B"], p["achieved GFLOP/s"], zorder=3)
        ax.annotate(f"B={p['batch']}: {p['fraction of roof']:.0%}",
                    (p["intensity FLOP/B"], p["achieved GFLOP/s"]), fontsize=8,
                    xytext=(4, -10), textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / weight byte)",
           ylabel="GFLOP/s", title="Roofline: decode steps against measured roofs")
    ax.legend()
    return fig, ax


# ---- real-time factor of audio components ---------------------------------------------------


def audio_seconds(loaded: Any, component: str, inputs: dict[str, torch.Tensor],
                  module: torch.nn.Module | None = None) -> tuple[float, str] | None:
    """Audio duration one forward of `component` covers, and how it was read; None: not audio.

    A recipe may state it (recipe.audio_seconds(loaded, component, inputs)); otherwise the
    input's name and shape, with the module config's rates, give it:
      input_values / waveform [.., T]       T / config.sampling_rate (16 kHz if absent)
      spectrogram [B, frames, bins]         frames x prod(config.upsample_rates) / sampling_rate
                                            (a vocoder makes hop = prod(upsample) samples per frame)
      input_features [B, mel, frames]       frames / 100 (Whisper log-mel, hop 160 at 16 kHz)
      audio_states [B, positions, D]        positions / 50 (Whisper encoder output rate)
    """
    stated = getattr(loaded.recipe, "audio_seconds", None)
    if stated is not None:
        value = stated(loaded, component, inputs)
        if value is not None:
            return float(value), "stated by the recipe"
    cfg = getattr(module, "config", None)
    rate = int(getattr(cfg, "sampling_rate", 0) or DEFAULT_WAVEFORM_RATE)
    for name in ("input_values", "waveform"):
        if name in inputs:
            n = inputs[name].shape[-1]
            return n / rate, f"{name}: {n} samples at {rate} Hz"
    if "spectrogram" in inputs and getattr(cfg, "upsample_rates", None):
        frames, hop = inputs["spectrogram"].shape[1], math.prod(cfg.upsample_rates)
        return frames * hop / rate, f"spectrogram: {frames} frames x hop {hop} at {rate} Hz"
    if "input_features" in inputs:
        n = inputs["input_features"].shape[-1]
        return n / WHISPER_FRAMES_PER_S, f"input_features: {n} log-mel frames at 100 per second"
    if "audio_states" in inputs:
        n = inputs["audio_states"].shape[1]
        return n / WHISPER_POSITIONS_PER_S, f"audio_states: {n} encoder positions at 50 per second"
    return None


def rtf(run: Run) -> Section:
    """Processing time / audio duration for each audio component (batch 1), and its inverse."""
    rows: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    for name, module in run.loaded.components.items():
        try:
            inputs = run.loaded.example_inputs(name, batch=1)
            dur = audio_seconds(run.loaded, name, inputs, module)
            if dur is None:
                continue
            m = _measure_forward(run, module, inputs, name)
            row = {"component": name, "audio s": dur[0], "audio duration from": dur[1],
                   "mean s": m.stats.mean, "p90 s": m.stats.p90, "RTF": m.stats.mean / dur[0],
                   "x real time": dur[0] / m.stats.mean, "runs": m.stats.count}
            metrics[name] = {**row, "measurement": m.to_dict()}
        except Exception as exc:  # one component failing is a row
            row = {"component": name, **_failure("forward", exc)}
            metrics[name] = row
        rows.append(row)
    if not rows:
        rows = [{"component": "(none)", "status": "not applicable",
                 "note": f"recipe {run.loaded.recipe.name} has no audio component yet"}]
    return Section("rtf", pd.DataFrame(rows), metrics,
                   notes=["one forward per run (a codec's forward encodes and decodes)",
                          "RTF < 1: faster than real time; 'x real time' = audio s / processing s"])


def _measure_forward(run: Run, module: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     name: str) -> Measurement:
    def forward() -> Any:
        with torch.inference_mode():
            return module(**inputs)

    return bench.measure(forward, run.be, run.settings.rtf_protocol(), name=f"forward_{name}")


# ---- eager vs graph mode ------------------------------------------------------------------------


class CapReached(Exception):
    """The first graph-mode call ran past its time cap."""


@contextlib.contextmanager
def time_cap(seconds: float) -> Iterator[bool]:
    """Raise CapReached in the block after `seconds` (SIGALRM; main thread on POSIX only).

    Yields whether the cap is enforced; where it cannot be, the caller checks afterwards.
    """
    usable = (seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield False
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise CapReached(f"first graph-mode call still running after the {seconds:g} s cap")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def graph_config(sel: device.Selection) -> tuple[Any | None, str]:
    """transformers CompileConfig for the decode step on this device, and what it means.

    The backend and mode come from the device module (the one place that knows npu / cuda /
    cpu). transformers compiles the decode step by itself only on cuda-like devices, so other
    backends set CompileConfig._compile_all_devices (its documented switch for that).
    """
    from transformers import CompileConfig

    backend, mode, how = device.graph_compile(sel)
    if backend is None:
        return None, how
    cc = CompileConfig(backend=backend, mode=mode)
    if sel.backend != "cuda":
        cc._compile_all_devices = True
    return cc, how


def graph_cap(run: Run) -> float:
    return run.settings.graph_cap_s or device.graph_compile_cap_s(run.sel)


def modes(run: Run, lat: Section) -> Section:
    """Eager (the latency section's N-token runs) vs static cache + graph capture, batch 1."""
    s = run.settings
    eager: Measurement = lat.data["e2e"]
    rows = [_mode_row("eager: generate, dynamic cache", eager, s.new_tokens, "")]
    metrics: dict[str, Any] = {"eager_tokens_per_s": eager.rate(s.new_tokens)}
    checks: list[Check] = []
    graph, how, problem = _graph_measurement(run) if s.graph_mode else (None, "", "graph_mode=False")
    metrics["graph_how"] = how
    if graph is None:
        rows.append({"mode": "graph: static cache + torch.compile", "status": "not measured",
                     "note": problem})
        metrics["graph_problem"] = problem
        return Section("modes", pd.DataFrame(rows), metrics, checks,
                       notes=[f"graph mode not measured: {problem}"])
    rows.append(_mode_row("graph: static cache + torch.compile", graph, s.new_tokens, how))
    ratio = graph.rate(s.new_tokens) / eager.rate(s.new_tokens)
    same = _same_tokens(eager.output, graph.output)
    metrics.update(graph_tokens_per_s=graph.rate(s.new_tokens), speedup=ratio,
                   compile_s=graph.first_call_s, same_tokens=same, graph=graph.to_dict())
    checks.append(Check.judge("graph mode: same greedy tokens as eager", same["fraction"], "==",
                              1.0, "graph capture must not change results: both modes run the same greedy decode",
                              detail=same["detail"]))
    checks.append(_speedup_check(run, ratio))
    return Section("modes", pd.DataFrame(rows), metrics, checks,
                   notes=[f"first graph call (compile + capture): {graph.first_call_s:.2f} s"])


def _graph_measurement(run: Run) -> tuple[Measurement | None, str, str]:
    """(measurement or None, how graph mode was made, why it is missing)."""
    cc, how = graph_config(run.sel)
    if cc is None:
        return None, how, how
    with compile_cache(COMPILE_CACHE) as files_before:
        shown = os.path.relpath(COMPILE_CACHE, paths.ROOT)
        how += (f"; compile cache {shown} "
                f"({'warm' if files_before else 'cold'}: {files_before} files before)")
        return _graph_runs(run, cc, how)


def _graph_runs(run: Run, cc: Any, how: str) -> tuple[Measurement | None, str, str]:
    s = run.settings
    cap = graph_cap(run)
    fn = generate_fn(run.lm, lm_inputs(run), s.new_tokens, pad_id(run.loaded.tokenizer),
                     cache_implementation="static", compile_config=cc)
    prewarm_s = _prewarm(run, cc)
    timer = run.be.timer()
    started = time.time()  # file timestamps, to find what a cut-short compile wrote
    try:
        with time_cap(cap) as enforced, timer:
            fn()
    except Exception as exc:  # CapReached, or a compiler that is missing or fails
        _reset_compiled(run.lm)
        spent = timer.host_seconds
        if isinstance(exc, CapReached) or spent >= cap:
            _discard_partial(COMPILE_CACHE, started)  # half-written artifacts must not be reused
            return None, how, (f"{how}: the first call (compile) did not finish within the "
                               f"{cap:g} s cap (stopped after {spent:.1f} s); graph_cap_s raises it")
        return None, how, f"{how}: failed: {_failure('graph', exc)['error']}"
    first_s = timer.seconds
    if not enforced and first_s > cap:
        how += f" (cap {cap:g} s not enforceable in this thread; first call took {first_s:.1f} s)"
    protocol = s.protocol().with_(warmup=max(2, s.warmup) - 1)  # CUDA graphs record on call 2-3
    m = bench.measure(fn, run.be, protocol, name="graph")
    m.warmup_s.insert(0, first_s)
    _reset_compiled(run.lm)
    return m, f"{how}; compiler stack start-up {prewarm_s:.2f} s (outside the cap)", ""


@contextlib.contextmanager
def compile_cache(folder: Path) -> Iterator[int]:
    """Inductor's on-disk cache in the project's own folder for the block; yields its file count.

    A compile cut short by the cap can leave a truncated artifact that later runs would load;
    in a folder of our own it can be removed without touching anyone else's cache, and a later
    report run finds the complete artifacts of earlier ones (a warm cache, said in the report).
    """
    folder.mkdir(parents=True, exist_ok=True)
    before = sum(1 for f in folder.rglob("*") if f.is_file())
    try:
        from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir
    except ImportError:  # older torch: the environment variable alone
        temporary_cache_dir = _env_cache_dir
    with temporary_cache_dir(str(folder)):
        yield before


@contextlib.contextmanager
def _env_cache_dir(folder: str) -> Iterator[None]:
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def _discard_partial(folder: Path, since: float) -> int:
    """Delete the artifacts a cut-short compile left half-written under folder; how many.

    Inductor writes sources and cache entries atomically (temp file + rename) but links a
    kernel library straight to its final path, so a linker stopped by the cap leaves an empty
    or truncated .so that a later run would try to load. Complete files stay, so the cache
    still warms up from run to run.
    """
    gone = 0
    for f in folder.rglob("*"):
        try:
            if not f.is_file() or f.stat().st_mtime < since - 1.0:
                continue
            broken = f.stat().st_size == 0 or (
                f.suffix == ".so" and sys.platform.startswith("linux") and not elf_complete(f))
            if broken:
                f.unlink()
                gone += 1
        except OSError:
            continue
    return gone


def elf_complete(path: Path) -> bool:
    """Whether an ELF file holds its whole section-header table (the linker writes it last)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 64 or head[:4] != b"\x7fELF":
        return False
    order = "<" if head[5] == 1 else ">"
    if head[4] == 2:  # 64-bit: e_shoff at 0x28, e_shentsize / e_shnum at 0x3A
        (shoff,) = struct.unpack_from(order + "Q", head, 0x28)
        shentsize, shnum = struct.unpack_from(order + "HH", head, 0x3A)
    else:  # 32-bit: e_shoff at 0x20, e_shentsize / e_shnum at 0x2E
        (shoff,) = struct.unpack_from(order + "I", head, 0x20)
        shentsize, shnum = struct.unpack_from(order + "HH", head, 0x2E)
    return size >= shoff + shentsize * shnum


def _prewarm(run: Run, cc: Any) -> float:
    """Start the compiler stack on a two-line function, outside the cap; its seconds.

    torch.compile imports much of its stack lazily on the first compilation; an import cut
    short by the cap would leave a half-initialised module behind, so that happens here.
    """
    def tiny(x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1

    compiled = torch.compile(tiny, backend=cc.backend, mode=None if cc.mode == "default" else cc.mode)
    x = torch.ones(8, device=run.sel.device)
    _, seconds, _ = bench.timed(run.be, lambda: [compiled(x) for _ in range(3)])
    return seconds


def _reset_compiled(lm: torch.nn.Module) -> None:
    """Drop the compiled decode step so later eager runs are untouched."""
    for attr in ("_compiled_call", "_last_compile_config"):
        if hasattr(lm, attr):
            delattr(lm, attr)
    torch._dynamo.reset()


def _mode_row(mode: str, m: Measurement, new_tokens: int, how: str) -> dict[str, Any]:
    return {"mode": mode, "status": "measured", "tokens/s": m.rate(new_tokens),
            "mean s": m.stats.mean, "p90 s": m.stats.p90, "first call s": m.first_call_s,
            "runs": m.stats.count, "note": how}


def _same_tokens(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    """Fraction of equal token positions and the first position where they differ."""
    a, b = a.cpu(), b.cpu()
    if a.shape != b.shape:
        return {"fraction": 0.0, "detail": f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"}
    eq = (a == b)
    frac = float(eq.double().mean())
    diff = (~eq).nonzero()
    where = f"first difference at position {int(diff[0, -1])}" if len(diff) else "all equal"
    return {"fraction": frac, "detail": f"{int(eq.sum())}/{eq.numel()} tokens equal; {where}"}


def _speedup_check(run: Run, ratio: float) -> Check:
    name = "graph mode speedup over eager (tokens/s ratio)"
    if run.sel.backend == "cuda" and run.loaded.recipe.name == "gpa":
        return Check.judge(name, round(ratio, 3), ">=", 10.0,
                           "project target: static cache + CUDA graphs at least 10x eager HF generate for the GPA LM at batch 1 (launch-bound decode)")
    return Check(name, round(ratio, 3), "", None,
                 "project target of 10x applies to the GPA LM on CUDA; here informational")


# ---- sweeps ---------------------------------------------------------------------------------


def batch_sweep(run: Run) -> Section:
    """Per batch size: TTFT, latency for sweep_new_tokens, decode tokens/s per sequence and total."""
    s = run.settings
    p = s.sweep_protocol()
    rows, raw = [], []
    for b in s.sweep_batches:
        try:
            ttft = measure_generate(run, 1, p, batch=b, name=f"ttft_b{b}")
            e2e = measure_generate(run, s.sweep_new_tokens, p, batch=b, name=f"e2e_b{b}")
        except Exception as exc:
            rows.append({"batch": b, **_failure(f"batch {b}", exc)})
            continue
        r = decode_rates(ttft, e2e, s.sweep_new_tokens, batch=b)
        row = {"batch": b, "ttft s": r["ttft_s"], "latency s": r["e2e_s"],
               "latency p90 s": e2e.stats.p90, "tpot ms": r["tpot_s"] * 1e3,
               "decode tokens/s (all)": r["decode_tokens_per_s"],
               "tokens/s (end-to-end)": r["e2e_tokens_per_s"]}
        rows.append(row)
        raw.append({**row, "ttft": ttft.to_dict(), "e2e": e2e.to_dict()})
    ok = [r for r in rows if "status" not in r]
    return Section("batch_sweep", pd.DataFrame(rows),
                   {"new_tokens": s.sweep_new_tokens, "rows": raw, "protocol": p.describe()},
                   data={"batch_rows": ok})


def prompt_sweep(run: Run) -> Section:
    """Prefill time (TTFT, batch 1) per prompt length; lengths past the model's limit skipped."""
    p = run.settings.sweep_protocol()
    limit = getattr(run.lm.config, "max_position_embeddings", None) or 10**9
    rows, raw = [], []
    for n in run.settings.sweep_prompt_lengths:
        if n + 1 > limit:
            rows.append({"prompt tokens": n, "status": "skipped",
                         "error": f"beyond max_position_embeddings {limit}"})
            continue
        try:
            m = measure_generate(run, 1, p, length=n, name=f"prefill_{n}")
        except Exception as exc:
            rows.append({"prompt tokens": n, **_failure(f"prefill {n}", exc)})
            continue
        row = {"prompt tokens": n, "prefill s": m.stats.mean, "p90 s": m.stats.p90,
               "prefill tokens/s": n / m.stats.mean, "runs": m.stats.count}
        rows.append(row)
        raw.append({**row, "measurement": m.to_dict()})
    return Section("prompt_sweep", pd.DataFrame(rows), {"rows": raw, "protocol": p.describe()})


def sweeps_figure(batch: Section, prompt: Section) -> tuple[Any, Any]:
    """Throughput and latency against batch size; prefill time against prompt length."""
    fig, axes = plots.figure(ncols=3, width=12, height=3.4)
    b = batch.table.dropna(subset=["latency s"]) if "latency s" in batch.table else batch.table[:0]
    if len(b):
        axes[0].plot(b["batch"], b["decode tokens/s (all)"], marker="o")
        axes[1].plot(b["batch"], b["latency s"], marker="o")
    axes[0].set(xlabel="batch", ylabel="tokens/s", title="Decode throughput vs batch")
    axes[1].set(xlabel="batch", ylabel="s",
                title=f"Latency ({batch.metrics['new_tokens']} new tokens) vs batch")
    p = prompt.table.dropna(subset=["prefill s"]) if "prefill s" in prompt.table else prompt.table[:0]
    if len(p):
        axes[2].plot(p["prompt tokens"], p["prefill s"] * 1e3, marker="o")
    axes[2].set(xlabel="prompt tokens", ylabel="ms", title="Prefill time vs prompt length")
    axes[2].set_xscale("log", base=2)
    _ticks(axes[2], p["prompt tokens"])
    for ax in axes[:2]:
        _ticks(ax, b["batch"])
    for ax in axes:
        ax.set_ylim(bottom=0)
    return fig, axes


def _ticks(ax: Any, values: Any) -> None:
    """Ticks at the measured x values only, written as plain integers."""
    from matplotlib.ticker import NullFormatter

    ax.set_xticks([int(v) for v in values], [str(int(v)) for v in values])
    ax.xaxis.set_minor_formatter(NullFormatter())


# ---- summary --------------------------------------------------------------------------------


def headline(st: Any, run: Run, sections: Sequence[Section]) -> pd.DataFrame:
    """The figures a reader looks for first, recorded as flat metrics too."""
    by = {s.name: s for s in sections}
    lat, bw, md = by.get("latency"), by.get("bandwidth"), by.get("modes")
    rows = {
        "device": str(run.sel.device), "dtype": str(run.dtype).replace("torch.", ""),
        "model": f"{run.loaded.recipe.name} ({run.loaded.profile})",
        "load_seconds": run.loaded.timings.get("load_seconds"),
    }
    if lat:
        rows.update(ttft_s=lat.metrics["ttft_s"], tpot_s=lat.metrics["tpot_s"],
                    decode_tokens_per_s=lat.metrics["decode_tokens_per_s"],
                    e2e_tokens_per_s=lat.metrics["e2e_tokens_per_s"],
                    latency_mean_s=lat.data["e2e"].stats.mean,
                    latency_p99_s=lat.data["e2e"].stats.p99,
                    peak_allocated=lat.metrics["memory"]["peak_allocated"],
                    peak_reserved=lat.metrics["memory"]["peak_reserved"],
                    host_rss=lat.metrics["memory"]["host_rss"])
    if bw:
        rows["bandwidth_utilization"] = bw.metrics["utilization"]
    if md:
        rows.update(eager_tokens_per_s=md.metrics.get("eager_tokens_per_s"),
                    graph_tokens_per_s=md.metrics.get("graph_tokens_per_s"),
                    graph_speedup=md.metrics.get("speedup"))
    rows.update(host_load())
    for k, v in rows.items():
        st.metric(k, v)
    st.metric("settings", asdict(run.settings))
    return pd.DataFrame([{"quantity": k, "value": v} for k, v in rows.items()])


def host_load() -> dict[str, Any]:
    """The host's 1-minute load average against its logical cores, and what that means here.

    CPU timings need an otherwise idle host: when other processes keep the cores busy, the
    intra-op threads of small operators wait for each other and latencies grow many-fold.
    The load average counts this run too (up to one runnable thread per torch intra-op
    thread), so only the load beyond that is attributed to other work.
    """
    cores = os.cpu_count() or 1
    own = min(cores, torch.get_num_threads())
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        return {"host_load_1min": None, "host_logical_cores": cores}
    others = load - own
    busy = others > 0.5
    return {"host_load_1min": round(load, 2), "host_logical_cores": cores,
            "host_note": (f"host busy (load {load:.1f} on {cores} cores, about {others:.1f} "
                          "beyond this run): CPU timings are inflated and noisy" if busy
                          else "host quiet")}


def checks_table(result: Any) -> pd.DataFrame:
    """The stage's checks as the report shows them (verdict, value, threshold, source)."""
    verdict = {True: "passed", False: "FAILED", None: "info"}
    return pd.DataFrame([{"check": c.name, "verdict": verdict[c.passed], "value": c.value,
                          "threshold": c.threshold, "source": c.source, "detail": c.detail}
                         for c in result.checks])
