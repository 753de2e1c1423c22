"""The performance stage's sections: instrument sanity, latency and throughput, memory,
bandwidth and roofline, real-time factor of audio components, batch and prompt sweeps, and the
headline figures. Each returns a Section (table, checks, metrics, notes)."""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import pandas as pd
import torch

from helpers import bench
from helpers import device as devices
from helpers.bench import Measurement, Protocol
from helpers.device import dtype_name
from helpers.device.memory import touched_block
from helpers.models.base import LoadedModel
from helpers.records import Check, LatencyStats
from helpers.stages.kit import Section, Stage, failure_row
from helpers.stages.performance.generation import (
    Run,
    measure_decode,
    measure_hf_generate,
)
from helpers.stages.performance.settings import (
    CACHE_SIZED,
    DEFAULT_WAVEFORM_RATE,
    GPA_REPORT,
    MATMUL_RUN_S,
    MIB,
    SLEEP_RETRY,
    SLEEP_S,
    SLEEP_TOL,
    WHISPER_FRAMES_PER_S,
    WHISPER_POSITIONS_PER_S,
)

# ---- sanity -----------------------------------------------------------------------------


def sleep_probe(be: devices.Backend, seconds: float = SLEEP_S, runs: int = SLEEP_RETRY,
                ) -> Measurement:
    """Measure time.sleep(seconds) `runs` times with the backend's timer (events bracket idle
    device time)."""
    return bench.measure(lambda: time.sleep(seconds), be,
                         Protocol(warmup=0, min_iters=runs, min_seconds=0), name=f"sleep_{seconds}")


def sleep_error(m: Measurement, seconds: float = SLEEP_S) -> float:
    """Relative error of the median run (one late wake-up on a busy host is not the timer)."""
    return abs(m.stats.p50 - seconds) / seconds


def timer_probe(be: devices.Backend, runs: int) -> Measurement:
    """The sleep probe, `runs` times; SLEEP_RETRY runs (their median) when those were off by
    more than SLEEP_TOL: a sleep never returns early, a late one may be the host's doing."""
    m = sleep_probe(be, runs=runs)
    if runs < SLEEP_RETRY and sleep_error(m) > SLEEP_TOL:
        m = sleep_probe(be, runs=SLEEP_RETRY)
    return m


def allocation_probe(be: devices.Backend, dev: torch.device, nbytes: int = 64 * MIB) -> dict[str, Any]:
    """Allocate and fill `nbytes`; the change the memory reader sees (device bytes, or RSS).

    On an accelerator the reader is the allocator's `allocated` counter, around a filled
    tensor. On the cpu it is the process's current RSS, around a fresh anonymous mapping with
    every page written (memory.touched_block): a tensor there may come from heap pages the
    process already holds (after a large model is loaded and freed, glibc keeps them), and the
    RSS would not move although the reader is right.
    """
    touched_block(1 << 20).close()  # the code that writes pages resident before the count starts
    collecting = gc.isenabled()
    gc.disable()  # no collection between the two reads: it would free what `before` counted
    try:
        be.synchronize()
        before = be.memory()
        key = "allocated" if before["allocated"] is not None else "host_rss"
        if key == "allocated":
            block: Any = torch.ones(nbytes // 4, dtype=torch.float32, device=dev)  # every byte
            be.synchronize()
        else:
            block = touched_block(nbytes)
        after = be.memory()
    finally:
        if collecting:
            gc.enable()
    measured = after[key] - before[key]
    if key == "host_rss":
        block.close()
    del block
    return {"reader": key, "expected_bytes": nbytes, "measured_bytes": measured,
            "relative_error": abs(measured - nbytes) / nbytes,
            "allocation": "torch.ones on the device" if key == "allocated"
            else "anonymous mapping, every page written"}


def memory_check(alloc: dict[str, Any]) -> Check:
    """The memory reader's sanity verdict on an allocation_probe result."""
    return Check.judge(
        f"memory: {alloc['expected_bytes'] // MIB} MiB allocation measured within 10%",
        round(alloc["relative_error"], 5), "<=", 0.10, "physical sanity of the memory reader",
        detail=f"{alloc['reader']} grew {alloc['measured_bytes'] / MIB:.2f} MiB "
               f"({alloc['allocation']})")


def sanity(run: Run) -> Section:
    """Physical sanity of the stage's own instruments, on the device under test."""
    m = timer_probe(run.be, run.settings.sleep_min_iters)
    alloc = allocation_probe(run.be, run.sel.device)
    sleep_err = sleep_error(m)
    checks = [
        Check.judge("timer: 0.2 s sleep measured within 5%", round(sleep_err, 5), "<=", SLEEP_TOL,
                    "physical sanity of the timer (optimum-benchmark checks a 1 s sleep at ±10%)",
                    detail=f"median {m.stats.p50:.5f} s (mean {m.stats.mean:.5f} s) over "
                           f"{m.stats.count} runs; {m.timer}"),
        memory_check(alloc),
    ]
    table = pd.DataFrame([
        {"probe": "time.sleep(0.2)", "expected": "0.2 s", "measured": f"{m.stats.p50:.5f} s (median)",
         "relative error": sleep_err, "instrument": m.timer},
        {"probe": f"torch.ones({alloc['expected_bytes'] // MIB} MiB)",
         "expected": f"{alloc['expected_bytes'] / MIB:.1f} MiB",
         "measured": f"{alloc['measured_bytes'] / MIB:.2f} MiB",
         "relative error": alloc["relative_error"], "instrument": f"backend.memory()['{alloc['reader']}']"},
    ])
    return Section("sanity", table, checks, {"sleep": m.to_dict(), "allocation": alloc})


# ---- latency, throughput, memory ----------------------------------------------------------


def latency(run: Run) -> Section:
    """The project's decode loop at batch 1: prefill (time to first token) and decode timed
    apart, the N-token latency, decode throughput and TPOT, peak memory during the runs; the
    same loop over a static KV cache; and HF generate of the same N tokens, labelled as such."""
    s = run.settings
    p = s.protocol()
    n = s.new_tokens
    run.be.reset_peak()
    loop = measure_decode(run, n, p, name=f"decode_{n}")
    mem = run.be.memory()
    mem_rows = run.be.memory_rows()
    compare = s.compare_protocol()
    warm = s.warmup_tokens
    static = measure_decode(run, n, compare, static=True, name=f"decode_{n}_static_cache",
                            warm_tokens=warm)
    hf = measure_hf_generate(run, n, compare, name=f"hf_generate_{n}", warm_tokens=warm)
    rates = loop.rates()
    rates["static_decode_tokens_per_s"] = static.rates()["decode_tokens_per_s"]
    rates["hf_generate_tokens_per_s"] = hf.rate(n)
    same_static = bool(torch.equal(static.run.output, loop.run.output))
    same_hf = bool(torch.equal(hf.output[:, -n:].cpu(), loop.run.output))
    rows = [_stats_row(f"time to first token: prefill of {loop.prompt_tokens} prompt tokens + "
                       "first token (decode loop)", loop.prefill),
            _stats_row(f"decode: {n - 1} steps after the first token (decode loop, dynamic cache)",
                       loop.decode),
            _stats_row(f"latency, {n} new tokens (decode loop, dynamic cache)", loop.run.stats,
                       loop.run.first_call_s),
            _stats_row(f"decode: {n - 1} steps (decode loop, static cache)", static.decode),
            _stats_row(f"latency, {n} new tokens (HF generate, dynamic cache; comparison)",
                       hf.stats, hf.first_full_call_s)]
    metrics = {"new_tokens": n, "batch": 1, **rates, "memory": mem, "memory_devices": mem_rows,
               "prompt_tokens": loop.prompt_tokens, "prefill": loop.prefill.to_dict(),
               "decode": loop.decode.to_dict(), "e2e": loop.run.to_dict(),
               "static_decode": static.to_dict(), "hf_generate": hf.to_dict(),
               "static_decode_same_tokens": same_static, "hf_generate_same_tokens": same_hf,
               "protocol": loop.run.describe()}
    checks = [Check("decode throughput (tokens/s)", round(rates["decode_tokens_per_s"], 3), "",
                    None, GPA_REPORT, detail=f"decode loop, dynamic cache, 1 / TPOT; GPA on "
                    f"Ascend 910 reported 26.1 tok/s ({n}-token end-to-end here: "
                    f"{rates['e2e_tokens_per_s']:.2f} tok/s; time to first token "
                    f"{rates['ttft_s']:.4g} s; static cache: "
                    f"{rates['static_decode_tokens_per_s']:.2f} tok/s; HF generate end-to-end: "
                    f"{rates['hf_generate_tokens_per_s']:.2f} tok/s)")]
    checks += _settled_checks(loop.run, static.run, hf)
    load = host_load()
    metrics["host"] = load
    notes = [s.skipped(), f"protocol: {loop.run.describe()}",
             "decode loop: helpers.generate, the loop every stage decodes with; prefill and "
             "decode are stamped by its synchronized clock inside each timed run",
             f"static cache: {static.run.describe()}; same greedy tokens: "
             f"{'yes' if same_static else 'no'}",
             f"HF generate (comparison): {hf.describe()}; same greedy tokens: "
             f"{'yes' if same_hf else 'no'}"]
    if run.sel.backend == "cpu" and load.get("host_note", "host quiet") != "host quiet":
        notes.append(load["host_note"])
    return Section("latency", pd.DataFrame(rows), checks, metrics, notes=notes,
                   data={"e2e": loop.run, "static": static.run, "hf_generate": hf})


def _settled_checks(*ms: Measurement) -> list[Check]:
    """An info row for each measurement whose warmup did not settle (its figure may still drift)."""
    return [Check(f"warmup settled: {m.name}", False, "", None,
                  "timing protocol: warm up until two consecutive runs agree",
                  detail=m.describe()) for m in ms if m.settled is False]


def _stats_row(what: str, st: LatencyStats, first_call_s: float | None = None) -> dict[str, Any]:
    return {"measurement": what, "runs": st.count, "first call s": first_call_s,
            "mean s": st.mean, "median s": st.p50, "p90 s": st.p90, "p99 s": st.p99,
            "min s": st.min, "max s": st.max, "stdev s": st.stdev}


def throughput_table(sec: Section) -> pd.DataFrame:
    """The throughput figures, each named for what it times: the decode loop's prefill and
    decode apart, its static-cache variant, and HF generate as a labelled comparison."""
    m = sec.metrics
    n = m["new_tokens"]
    return pd.DataFrame([
        {"quantity": f"time to first token (decode loop: prefill of {m['prompt_tokens']} "
                     "tokens + first token)", "value": m["ttft_s"], "unit": "s"},
        {"quantity": "prefill throughput (prompt tokens / time to first token)",
         "value": m["prefill_tokens_per_s"], "unit": "tokens/s"},
        {"quantity": "time per output token (decode loop, dynamic cache)",
         "value": m["tpot_s"] * 1e3, "unit": "ms"},
        {"quantity": f"decode throughput: decode loop, dynamic cache ((N - 1) / decode time, N = {n})",
         "value": m["decode_tokens_per_s"], "unit": "tokens/s"},
        {"quantity": "decode throughput: decode loop, static cache",
         "value": m["static_decode_tokens_per_s"], "unit": "tokens/s"},
        {"quantity": f"end-to-end throughput (decode loop, {n} tokens / latency)",
         "value": m["e2e_tokens_per_s"], "unit": "tokens/s"},
        {"quantity": f"end-to-end throughput: HF generate, {n} tokens / latency (comparison)",
         "value": m["hf_generate_tokens_per_s"], "unit": "tokens/s"},
    ])


def memory_table(sec: Section) -> pd.DataFrame:
    """Peak device memory (allocated, reserved) per device of the placement, their total when
    there are several, and host RSS around the N-token runs, MiB."""
    mem = sec.metrics["memory"]
    rows: list[dict[str, Any]] = []
    labels = {"peak_allocated": "peak allocated", "peak_reserved": "peak reserved",
              "allocated": "allocated now", "reserved": "reserved now"}
    per = sec.metrics.get("memory_devices") or []
    for r in per:
        rows += [{"memory": f"device {r['device']}: {label}", "MiB": r[k] / MIB, "note": ""}
                 for k, label in labels.items()]
    if not per:
        rows += [{"memory": f"device {label}", "MiB": None, "note": "not available on this backend"}
                 for label in labels.values()]
    host = {"host_rss": "host RSS now", "peak_rss_since_reset": "host peak RSS during the runs",
            "peak_rss": "host peak RSS, process lifetime"}
    rows += [{"memory": label, "MiB": None if mem.get(k) is None else mem[k] / MIB,
              "note": "" if mem.get(k) is not None else "not available on this backend"}
             for k, label in host.items()]
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
    static_tps = lat.metrics.get("static_decode_tokens_per_s")
    achieved = wbytes * tps
    ratio = achieved / copy_bps
    rows = [
        {"quantity": "weights read per decoded token", "value": wbytes / 1e6, "unit": "MB", "how": how},
        {"quantity": "decode throughput (batch 1, decode loop, dynamic cache)", "value": tps,
         "unit": "tokens/s", "how": "latency section"},
        {"quantity": "achieved weight-read bandwidth (decode loop)", "value": achieved / 1e9,
         "unit": "GB/s", "how": "weights per token x tokens/s"},
        {"quantity": "measured device bandwidth (copy)", "value": copy_bps / 1e9, "unit": "GB/s",
         "how": f"{run.settings.copy_mib} MiB copy, (read + write) / time, {copy_m.stats.count} runs"},
        {"quantity": "bandwidth utilization (decode loop)", "value": ratio, "unit": "ratio",
         "how": "achieved / measured"},
    ]
    metrics = {"weight_bytes_per_token": wbytes, "weight_elements": welems, "counted": how,
               "achieved_bytes_per_s": achieved, "copy_bytes_per_s": copy_bps,
               "utilization": ratio, "copy": copy_m.to_dict()}
    if static_tps:
        metrics["utilization_static_decode"] = wbytes * static_tps / copy_bps
        rows.append({"quantity": "bandwidth utilization (decode loop, static cache)",
                     "value": metrics["utilization_static_decode"], "unit": "ratio",
                     "how": f"weights per token x {static_tps:.1f} tokens/s / measured"})
    table = pd.DataFrame(rows)
    checks = [Check("bandwidth utilization (decode, batch 1)", round(ratio, 4), "", None,
                    "informational (gpt-fast reports achieved GB/s the same way)",
                    detail=f"{achieved / 1e9:.3f} GB/s of {copy_bps / 1e9:.2f} GB/s measured")]
    notes = ["KV-cache reads and activations are not counted: at batch 1 and short contexts "
             "they are small next to the weights"]
    if wbytes < CACHE_SIZED:
        notes.append(f"the weights ({wbytes / 1e6:.2f} MB) fit in on-chip caches: decode then "
                     "reads them from cache, not device memory, so this ratio says little")
    return Section("bandwidth", table, checks, metrics, notes=notes,
                   data={"weight_bytes": wbytes, "weight_elements": welems, "copy_bps": copy_bps})


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
    return Section("roofline", pd.DataFrame(rows), metrics=metrics,
                   notes=[f"compute roof: {n}x{n} matmul in {dtype_name(run.dtype)} (n doubled "
                          f"from 256 until one product takes >= {MATMUL_RUN_S * 1e3:g} ms, at "
                          f"most 8192); {mm.describe()}"])


# ---- real-time factor of audio components ---------------------------------------------------


def audio_seconds(loaded: LoadedModel, component: str, inputs: dict[str, torch.Tensor],
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
            row = bench.real_time_factor(m, dur[0], name, run.target.label, dur[1])
            metrics[name] = {**row, "measurement": m.to_dict()}
            row = {k: v for k, v in row.items() if k != "protocol"}  # said once, in the notes
        except Exception as exc:  # one component failing is a row
            row = {"component": name, **failure_row("forward", exc)}
            metrics[name] = row
        rows.append(row)
    if not rows:
        rows = [{"component": "(none)", "status": "not applicable",
                 "note": f"recipe {run.loaded.recipe.name} has no audio component yet"}]
    return Section("rtf", pd.DataFrame(rows), metrics=metrics,
                   notes=["one forward per run (a codec's forward encodes and decodes)",
                          f"protocol: {run.settings.rtf_protocol().describe()}",
                          "RTF < 1: faster than real time; 'x real time' = audio s / processing s"])


def _measure_forward(run: Run, module: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     name: str) -> Measurement:
    def forward() -> Any:
        with torch.inference_mode():
            return module(**inputs)

    return bench.measure(forward, run.be, run.settings.rtf_protocol(), name=f"forward_{name}")


# ---- sweeps ---------------------------------------------------------------------------------


def batch_sweep(run: Run) -> Section:
    """Per batch size: TTFT, latency for sweep_new_tokens, decode tokens/s per sequence and total
    (the decode loop over identical rows)."""
    s = run.settings
    p = s.sweep_protocol()
    rows, raw = [], []
    for b in s.sweep_batches:
        try:
            t = measure_decode(run, s.sweep_new_tokens, p, batch=b, name=f"decode_b{b}",
                               warm_tokens=s.warmup_tokens)
        except Exception as exc:
            rows.append({"batch": b, **failure_row(f"batch {b}", exc)})
            continue
        r = t.rates()
        row = {"batch": b, "ttft s": r["ttft_s"], "latency s": r["e2e_s"],
               "latency p90 s": t.run.stats.p90, "tpot ms": r["tpot_s"] * 1e3,
               "decode tokens/s (all)": r["decode_tokens_per_s"],
               "tokens/s (end-to-end)": r["e2e_tokens_per_s"]}
        rows.append(row)
        raw.append({**row, "timing": t.to_dict()})
    ok = [r for r in rows if "status" not in r]
    return Section("batch_sweep", pd.DataFrame(rows), metrics=
                   {"new_tokens": s.sweep_new_tokens, "rows": raw, "protocol": p.describe()},
                   data={"batch_rows": ok})


def prompt_sweep(run: Run) -> Section:
    """Prefill time (TTFT of the decode loop, batch 1) per prompt length; lengths past the
    model's limit skipped."""
    p = run.settings.sweep_protocol()
    limit = getattr(run.lm.config, "max_position_embeddings", None) or 10**9
    rows, raw = [], []
    for n in run.settings.sweep_prompt_lengths:
        if n + 1 > limit:
            rows.append({"prompt tokens": n, "status": "skipped",
                         "error": f"beyond max_position_embeddings {limit}"})
            continue
        try:
            t = measure_decode(run, 1, p, length=n, name=f"prefill_{n}")
        except Exception as exc:
            rows.append({"prompt tokens": n, **failure_row(f"prefill {n}", exc)})
            continue
        row = {"prompt tokens": n, "prefill s": t.prefill.mean, "p90 s": t.prefill.p90,
               "prefill tokens/s": n / t.prefill.mean, "runs": t.prefill.count}
        rows.append(row)
        raw.append({**row, "timing": t.to_dict()})
    return Section("prompt_sweep", pd.DataFrame(rows),
                   metrics={"rows": raw, "protocol": p.describe()})


# ---- summary --------------------------------------------------------------------------------


def headline(st: Stage, run: Run, sections: Sequence[Section]) -> pd.DataFrame:
    """The figures a reader looks for first, recorded as flat metrics too."""
    by = {s.name: s for s in sections}
    lat, bw, md = by.get("latency"), by.get("bandwidth"), by.get("modes")
    rows = {
        "device": str(run.sel.device), "dtype": dtype_name(run.dtype),
        "model": f"{run.loaded.recipe.name} ({run.loaded.profile})",
        "load_seconds": run.loaded.timings.get("load_seconds"),
    }
    if lat:
        rows.update(ttft_s=lat.metrics["ttft_s"], decode_s=lat.metrics["decode_s"],
                    tpot_s=lat.metrics["tpot_s"],
                    decode_tokens_per_s=lat.metrics["decode_tokens_per_s"],
                    decode_tokens_per_s_static_cache=lat.metrics["static_decode_tokens_per_s"],
                    e2e_tokens_per_s=lat.metrics["e2e_tokens_per_s"],
                    hf_generate_tokens_per_s=lat.metrics["hf_generate_tokens_per_s"],
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
                    graph_speedup=md.metrics.get("speedup"),
                    graph_mode=md.metrics.get("graph_label") or md.metrics.get("graph_problem"))
    load = host_load()
    rows.update(load)
    if run.sel.backend == "cpu" and load.get("host_note", "host quiet") != "host quiet":
        # said in the headline itself, not only in a note: every CPU timing above is suspect
        rows = {"timings": "UNRELIABLE: " + load["host_note"], **rows}
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
