"""Figures of the performance stage, drawn from its sections."""

from __future__ import annotations

from typing import Any

from helpers import plots
from helpers.stages.kit import Section


def bandwidth_figure(sec: Section) -> tuple[Any, Any]:
    m = sec.metrics
    fig, ax = plots.bars(["measured copy", "decode weight reads"],
                         [m["copy_bytes_per_s"] / 1e9, m["achieved_bytes_per_s"] / 1e9],
                         f"Memory bandwidth: utilization {m['utilization']:.1%}", "GB/s")
    return fig, ax


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
