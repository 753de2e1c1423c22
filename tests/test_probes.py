"""Operator probes: catalog, verdict rules, isolation (planted raise / abort / hang), tracing and
replay of a real module, the report pieces, and the stage on the tiny GPA recipe.

No GPU/NPU here: the device is the CPU. Fallback detection runs through the real fd-level
capture of helpers.device with torch_npu's exact warning line written to stderr.
"""

from __future__ import annotations

import csv
import math
import os
import pickle
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import device
from helpers.config import RunConfig
from helpers.grammar import DTYPE_BYTES
from helpers.probes import catalog as cat
from helpers.probes import execute, trace, verdict
from helpers.probes.catalog import Probe, Randn
from helpers.probes.isolate import Worker
from helpers.runner import forkserver
from helpers.stages import operator_probes as probes
from helpers.stages.kit import target

NPU_LINE = (
    "[W610 18:26:03.055846726 VariableFallbackKernel.cpp:250] Warning: CAUTION: The operator "
    "'aten::isin.Tensor_Tensor_out' is not currently supported on the NPU backend and will "
    "fall back to run on the CPU. This may have performance implications. "
    "(function npu_cpu_fallback)\n"
)


# ---- planted probes (module level: the worker unpickles them by reference) ----------------


def planted_raise(x: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("planted: this operator is not implemented for the device")


def planted_abort(x: torch.Tensor) -> torch.Tensor:
    os.abort()


def planted_hang(x: torch.Tensor) -> torch.Tensor:
    time.sleep(120)
    return x


def planted_fallback(x: torch.Tensor) -> torch.Tensor:
    os.write(2, NPU_LINE.encode())  # what torch_npu prints from C++ when it falls back
    return torch.isin(x, x[:2])


def _planted(name: str, fn: object) -> Probe:
    return Probe(name=name, op=f"planted {name}", shape="[8]", inputs=(Randn((8,)),), run=fn,
                 dtypes=("float32",), workaround=f"workaround for {name}")


@pytest.fixture(scope="module")
def ctx() -> execute.WorkerContext:
    """An in-process worker context on the CPU (what a worker process builds)."""
    return execute.WorkerContext.create("cpu")


# ---- catalog --------------------------------------------------------------------------


def test_catalog_has_forty_named_probes_that_pickle():
    probes_ = cat.probes()
    names = [p.name for p in probes_]
    assert len(probes_) >= 40
    assert len(set(names)) == len(names)
    for p in probes_:
        assert set(p.dtypes) <= set(DTYPE_BYTES), p.name
        assert pickle.loads(pickle.dumps(p)).name == p.name  # by reference into a worker


def test_catalog_covers_the_issue_list():
    by = {p.name: p for p in cat.probes()}
    assert set(by["stft"].dtypes) == {"float32", "float64", "int64"}
    assert {f"conv1d_d{d}" for d in (1, 3, 9)} <= set(by)
    for s, k in ((8, 16), (5, 11), (4, 8), (2, 4)):
        assert f"k{k} s{s}" in by[f"conv_transpose1d_s{s}"].shape
    for name in ("istft", "complex_abs", "power_real_imag", "rfft", "irfft", "mel_matmul",
                 "log10_clamp", "conv1d_depthwise", "conv1d_grouped", "weight_norm",
                 "weight_norm_removed", "snake", "gelu_tanh", "silu", "layer_norm", "rms_norm",
                 "batch_norm1d", "softmax", "sdpa_causal", "sdpa_mask", "sdpa_gqa",
                 "masked_scatter", "index_select", "gather", "embedding_int32",
                 "embedding_int64", "isin", "cdist", "argmin", "addmm_distances", "round",
                 "atanh", "cumprod_int32", "topk", "sort", "multinomial", "repeat_interleave",
                 "avg_pool1d", "pad_reflect_3d", "pad_reflect_4d", "pad_replicate_3d",
                 "pad_replicate_4d", "autocast_device", "autocast_cuda", "to_int",
                 "int64_arith", "float64_on_device"):
        assert name in by, name
    assert "bfloat16" in by["softmax"].dtypes and "float16" in by["softmax"].dtypes
    for name in ("complex_abs", "stft", "autocast_cuda", "sinc_resample"):
        assert by[name].workaround and by[name].known


def test_inputs_are_fixed_by_seed_and_name():
    p = cat.by_name("conv1d_d3")
    a = p.build(torch.bfloat16, execute.generator(p.name, 0))
    b = p.build(torch.bfloat16, execute.generator(p.name, 0))
    c = p.build(torch.bfloat16, execute.generator("other", 0))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert a[0].dtype == torch.bfloat16
    pcm = cat.Signal((1, 100)).make(torch.Generator().manual_seed(0), torch.int64)
    assert pcm.dtype == torch.int64 and pcm.abs().max() <= 32767


def test_mel_filters_are_triangles_that_cover_the_band():
    fb = cat.mel_filters(128, 400, 16000, torch.float64)  # [128, 201]
    assert fb.shape == (128, 201)
    assert fb.min() >= 0 and fb.max() <= 1.0
    assert (fb.sum(0)[1:-1] > 0).all()  # every bin between 0 Hz and Nyquist is covered
    assert (fb.sum(1)[64:] > 0).all()  # upper filters are wider than a bin (low ones may not)


# ---- verdict rules --------------------------------------------------------------------


def _golden_case(noise: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.randn(4096, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cpu = g.to(torch.bfloat16)
    dev = (g + noise * torch.randn(4096, generator=torch.Generator().manual_seed(2),
                                   dtype=torch.float64)).to(torch.bfloat16)
    return dev, cpu, g


def test_benchmark_rule_passes_an_equal_device_and_fails_a_noisy_one():
    dev, cpu, g = _golden_case(0.0)
    v = verdict.judge(dev, cpu, g)
    assert (v.status, v.rule, v.error_ratio) == ("ok", "benchmark", 1.0)
    assert 0.99 < v.cosine <= 1.0 and v.max_rel > 0  # bf16's own error against the golden
    dev, cpu, g = _golden_case(0.05)
    v = verdict.judge(dev, cpu, g)
    assert v.status == "mismatch" and v.error_ratio > 2
    assert "rmse ratio" in v.message


def test_exact_rule_and_structure_problems():
    a = torch.arange(10)
    assert verdict.judge(a, a.clone(), None).status == "ok"
    b = a.clone()
    b[3] = 7
    v = verdict.judge(b, a, None)
    assert v.status == "mismatch" and "1 of 10" in v.message
    v = verdict.judge(a.to(torch.int32), a, None)
    assert v.status == "mismatch" and "int32" in v.message
    v = verdict.judge((a,), (a, a), None)
    assert v.status == "mismatch" and "the CPU 2" in v.message


def test_binary_rule_is_bit_exact_and_nan_aware():
    x = torch.tensor([1.0, float("nan"), -0.5], dtype=torch.bfloat16)
    v = verdict.judge_binary(x, x.clone())
    assert (v.status, v.rule, v.max_abs) == ("ok", "binary", 0.0)
    y = x.clone()
    y[2] = -0.5039  # one bf16 ulp away
    v = verdict.judge_binary(y, x)
    assert v.status == "mismatch" and "1 of 3" in v.message


def test_float64_and_network_rules():
    x = torch.randn(64, dtype=torch.float64)
    assert verdict.judge(x, x.clone(), x).rule == "float64"
    assert verdict.judge(x * (1 + 1e-3), x, x).status == "mismatch"
    y = torch.randn(64)
    v = verdict.judge(y, y.clone(), None)
    assert (v.status, v.rule) == ("ok", "network")
    assert verdict.judge(-y, y, None).status == "mismatch"


def test_nan_on_the_device_is_a_mismatch():
    dev, cpu, g = _golden_case(0.0)
    dev = dev.clone()
    dev[0] = float("nan")
    v = verdict.judge(dev, cpu, g)
    assert v.status == "mismatch" and "NaN" in v.message


def test_distribution_rule_and_chi_square():
    from scipy import stats

    obs, exp = np.array([12.0, 25, 33, 30]), np.array([25.0, 25, 25, 25])
    assert verdict.chi2_pvalue(obs, exp) == pytest.approx(stats.chisquare(obs, exp).pvalue)
    counts = torch.tensor([250, 250, 250, 250])
    v = verdict.judge_distribution(counts, counts.clone(), torch.full((4,), 250.0))
    assert v.status == "ok" and "p = 1" in v.message
    v = verdict.judge_distribution(counts, counts.flip(0) + torch.tensor([1, -1, 0, 0]),
                                   torch.full((4,), 250.0))
    assert v.status == "mismatch" and "different draws" in v.message
    skewed = torch.tensor([700, 100, 100, 100])
    assert verdict.judge_distribution(skewed, skewed, torch.full((4,), 250.0)).status == "mismatch"


# ---- one probe in process (what a worker runs) ----------------------------------------


def test_probes_on_the_cpu(ctx):
    rows = {(n, d): execute.run_probe(ctx, cat.by_name(n), d)
            for n, d in (("conv1d_d9", "bfloat16"), ("stft", "int64"), ("stft", "float64"),
                         ("autocast_cuda", "bfloat16"), ("autocast_device", "bfloat16"),
                         ("multinomial", "float32"), ("isin", "int64"), ("topk", "float16"))}
    conv = rows["conv1d_d9", "bfloat16"]
    assert (conv["status"], conv["rule"], conv["error_ratio"]) == ("ok", "benchmark", 1.0)
    assert "aten::convolution" in conv["aten_ops"] and conv["workaround"] == ""
    assert 0.99 < conv["cosine"] <= 1.0
    stft = rows["stft", "int64"]
    assert stft["status"] == "unsupported" and "CPU raises too" in stft["message"]
    assert stft["workaround"].startswith("cast the signal to float32")
    assert rows["stft", "float64"]["rule"] == "float64"
    hard = rows["autocast_cuda", "bfloat16"]
    assert hard["status"] == "unsupported" and "no effect on cpu" in hard["message"]
    assert "device_type=x.device.type" in hard["workaround"]
    assert rows["autocast_device", "bfloat16"]["status"] == "ok"
    assert rows["multinomial", "float32"]["rule"] == "distribution"
    assert rows["multinomial", "float32"]["status"] == "ok"
    assert (rows["isin", "int64"]["status"], rows["isin", "int64"]["rule"]) == ("ok", "exact")
    assert rows["topk", "float16"]["status"] == "ok"


def test_fallback_is_detected_and_remembered_by_operator(ctx):
    row = execute.run_probe(ctx, _planted("planted_fallback", planted_fallback), "float32")
    assert row["status"] == "fallback"
    assert "aten::isin.Tensor_Tensor_out" in row["message"]
    assert row["workaround"] == "workaround for planted_fallback"
    # torch_npu warns once per operator and process: a later isin call is still a fallback
    row = execute.run_probe(ctx, cat.by_name("isin"), "int64")
    assert row["status"] == "fallback" and "aten::isin" in row["message"]
    ctx.fell_back.clear()


# ---- isolation ------------------------------------------------------------------------


@pytest.fixture(params=["spawned", "forked"])
def start(request, tmp_path, monkeypatch):
    """How the worker starts: spawned, or forked by a fork server named in the environment (as
    a stage kernel of the report sees it), whose imports are made."""
    if request.param == "spawned":
        monkeypatch.delenv(forkserver.SOCKET_ENV, raising=False)
        yield request.param
        return
    # pytest too: the planted probes unpickle by importing this module, which imports it (a
    # spawned worker has it imported at start, as the parent's main module)
    server = forkserver.Server(tmp_path / "fork", ("helpers.probes.execute", "pytest"), ())
    try:
        monkeypatch.setenv(forkserver.SOCKET_ENV, str(server.wait_ready(timeout=120)))
        yield request.param
    finally:
        server.close()


def test_planted_raise_abort_and_hang_become_rows_and_the_rest_go_on(tmp_path, start):
    ok = cat.by_name("silu")
    planted = [_planted("raise", planted_raise), ok, _planted("abort", planted_abort), ok,
               _planted("hang", planted_hang), ok]
    with Worker("cpu", log_dir=tmp_path) as w:
        t0 = time.perf_counter()
        # the timeout counts from a started worker (imports and warm-up belong to the start):
        # a silu on 8 floats answers in milliseconds, so 2.5 s holds on a loaded host too
        rows = probes.run_catalog(w, planted, dtypes=["float32"], timeout_s=2.5)
        took = time.perf_counter() - t0
        starts = w.starts
        assert w.forked is (start == "forked")
    assert [r["status"] for r in rows] == ["unsupported", "ok", "crashed", "ok", "timeout", "ok"]
    assert "planted: this operator is not implemented" in rows[0]["message"]
    assert "SIGABRT" in rows[2]["message"]
    assert "within 2.5 s" in rows[4]["message"]
    assert rows[2]["workaround"] == "workaround for abort"
    assert starts == 3  # first start, then one fresh worker after the abort and after the hang
    assert took < 90


def test_worker_start_failure_says_why(tmp_path):
    with pytest.raises(probes.WorkerStartError, match="npu:3"):
        Worker("npu:3", log_dir=tmp_path).start()


# ---- trace and replay -----------------------------------------------------------------


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.proj = torch.nn.Linear(16, 48)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.emb(ids))  # [B, S, 16]
        q, k, v = self.proj(h).view(1, -1, 3, 2, 8).permute(2, 0, 3, 1, 4)  # 3 x [B, 2, S, 8]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.rsqrt(a.pow(2).mean(-1) + 1e-6)


def _record(module: torch.nn.Module, **inputs: torch.Tensor) -> list[trace.OpRecord]:
    records: dict[str, trace.OpRecord] = {}
    with torch.no_grad(), trace.Recorder(torch.device("cpu"), "tiny", records):
        module(**inputs)
    return list(records.values())


def test_recorder_keeps_signatures_and_index_values():
    torch.manual_seed(0)
    ids = torch.tensor([[3, 7, 7, 49, 0]])
    recs = _record(_Tiny().eval(), ids=ids)
    ops = {r.op for r in recs}
    assert {"aten::embedding", "aten::native_layer_norm", "aten::rsqrt"} <= ops
    emb = next(r for r in recs if r.op == "aten::embedding")
    spec = emb.specs()[1]
    assert spec.dtype == "int64" and torch.equal(spec.values, ids)
    assert emb.dtype() == "float32" and "int64[1, 5]" in emb.shape()
    assert len({r.key for r in recs}) == len(recs)
    assert pickle.loads(pickle.dumps(emb)).key == emb.key


def test_replay_of_a_traced_module_is_ok_on_the_cpu(ctx):
    torch.manual_seed(0)
    recs = _record(_Tiny().eval().to(torch.bfloat16), ids=torch.tensor([[1, 2, 3, 4]]))
    rows = [trace.replay(ctx, r) for r in recs]
    assert {r["status"] for r in rows} == {"ok"}, [(r["op"], r["message"]) for r in rows]
    sdpa = [r for r in rows if "attention" in r["op"]]
    assert sdpa and sdpa[0]["rule"] == "benchmark" and sdpa[0]["dtype"] == "bfloat16"
    views = [r for r in rows if r["op"] in ("aten::view", "aten::permute", "aten::embedding")]
    assert views and {r["rule"] for r in views} == {"binary"}
    rsqrt = next(r for r in rows if r["op"] == "aten::rsqrt")
    assert rsqrt["status"] == "ok" and math.isfinite(rsqrt["cosine"])  # positive inputs


def test_replay_skips_what_it_cannot_rebuild(ctx):
    big = trace.TensorSpec((100_000,), "int64", True, None)
    rec = trace.OpRecord("aten::index_select", (trace.TensorSpec((10, 4), "float32", True), 0,
                                                big), {}, "k1")
    row = trace.replay(ctx, rec)
    assert row["status"] == "skipped" and "values were not recorded" in row["message"]
    rec = trace.OpRecord("aten::relu", (trace.TensorSpec((4096,), "float32", True),), {}, "k2")
    assert trace.replay(ctx, rec, max_numel=100)["status"] == "skipped"
    rec = trace.OpRecord("aten::relu", (trace.Opaque("Generator"),), {}, "k3")
    assert "Generator" in trace.replay(ctx, rec)["message"]
    rec = trace.OpRecord("aten::no_such_op", (), {}, "k4")
    assert "not found" in trace.replay(ctx, rec)["message"]


def test_cpu_references_for_fused_attention_match_the_cpu_kernel():
    q, k, v = (torch.randn(1, 4, 12, 16) for _ in range(3))
    out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)[0]
    torch.testing.assert_close(trace._flash_reference(q, k, v, 0.0, True), out)
    bias = torch.randn(1, 1, 12, 12)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(trace._biased_reference(q, k, v, bias, False), ref)
    kv = torch.randn(1, 2, 12, 16)  # grouped KV heads are expanded
    ref = F.scaled_dot_product_attention(q, kv.repeat_interleave(2, 1), kv.repeat_interleave(2, 1))
    torch.testing.assert_close(trace._sdpa_reference(q, kv, kv), ref)


# ---- report pieces --------------------------------------------------------------------


def _row(op: str, dtype: str, status: str, source: str = "catalog") -> dict:
    v = verdict.Verdict(status, "run", message=f"{status} row")
    return {"source": source, "probe": op, "group": "", "op": op, "dtype": dtype, "shape": "[1]",
            **v.to_dict(), "workaround": "", "known": "", "seconds": 0.01}


def test_coverage_checks_csv_and_heatmap(tmp_path):
    model = [_row("aten::mm", "bfloat16", "ok", "model"), _row("aten::mm", "float32", "mismatch",
                                                                 "model"),
             _row("aten::isin", "int64", "fallback", "model"),
             _row("aten::view", "bfloat16", "skipped", "model")]
    catalog = [_row("F.silu", "float32", "ok"), _row("torch.stft", "int64", "unsupported"),
               _row("planted", "float32", "crashed")]
    cov = probes.coverage_counts(model)
    assert cov["signatures"] == {"ok": 1, "fallback": 1, "mismatch": 1, "fail": 0, "skipped": 1}
    assert cov["operators"] == {"ok": 0, "fallback": 1, "mismatch": 1, "fail": 0, "skipped": 1}
    checks = {c.name: c for c in probes.report.checks(catalog, model, {"errors": {}})}
    assert checks["all model operators run on the device"].value == 1
    assert checks["all model operators run on the device"].passed is False
    assert checks["model operators: no mismatch beyond tolerance"].passed is False
    assert checks["catalog: no crash/timeout"].passed is False
    assert "planted" in checks["catalog: no crash/timeout"].detail
    assert checks["catalog: probes that raise (each with its workaround)"].passed is None
    failed = probes.report.checks(catalog, [], {"error": "crashed: worker died"})
    assert failed[0].passed is False and "worker died" in failed[0].detail
    path = probes.write_csv(catalog + model, tmp_path / "probes.csv")
    with open(path, newline="") as fh:
        read = list(csv.DictReader(fh))
    assert len(read) == 7 and list(read[0]) == probes.CSV_COLUMNS
    assert read[0]["cosine"] == ""  # NaN is an empty cell
    assert list(probes.frame(catalog).columns) == probes.COLUMNS
    fig = probes.heatmap(model, "model")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["aten::mm", "aten::isin", "aten::view"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["float32", "bfloat16", "int64"]


# ---- the stage on the tiny GPA recipe -------------------------------------------------


def test_stage_on_the_tiny_gpa_model():
    cfg = RunConfig.from_params(model="gpa", device="cpu", dtype="bfloat16")
    subset = [cat.by_name("silu"), cat.by_name("stft")]
    run = probes.run(target(cfg), probes.Settings(probe_timeout=60.0, probe_components="lm"),
                     probes=subset)
    assert {(r["probe"], r["dtype"]) for r in run.catalog} == {
        ("silu", "float32"), ("silu", "bfloat16"), ("silu", "float16"), ("stft", "float32"),
        ("stft", "float64"), ("stft", "int64")}
    t = run.trace
    assert t["components"] == ["lm"] and not t["errors"], t["errors"]
    assert t["signatures"] == len(run.model) and t["operators"] >= 10
    ops = {r["op"] for r in run.model}
    assert "aten::embedding" in ops and "aten::mm" in ops
    assert all(r["status"] == "ok" for r in run.model), probes.problems(run.model)
    assert probes.coverage_counts(run.model)["signatures"]["ok"] == len(run.model)
    m = run.metrics()
    assert m["catalog_probes"] == 2 and "same kernels" in m["compared"]
    assert device.select("cpu").as_dict() == run.device
    checks = {c.name: c.passed for c in run.checks()}
    assert checks["all model operators run on the device"] is True
    assert checks["catalog: no crash/timeout"] is True
    with pytest.raises(ValueError, match="no component vocoder"):
        trace.trace_model(execute.WorkerContext.create("cpu"), cfg.to_params(), "bfloat16",
                          ["vocoder"])


def test_fallback_list_is_said_incomplete_when_warnings_can_be_hidden(monkeypatch):
    run = probes.ProbeRun(device={"device": "cpu", "backend": "cpu"}, dtype="float32",
                          catalog=[], model=[], trace=None,
                          timings={"worker_start": 0.0, "catalog": 0.0, "total": 0.0},
                          worker={"starts": 1})
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("TORCH_NPU_DISABLED_WARNING", raising=False)
    monkeypatch.delenv("TORCH_NPU_WARNING_DISABLE", raising=False)
    monkeypatch.delenv("TORCH_CPP_LOG_LEVEL", raising=False)
    assert not [c for c in run.checks() if "incomplete" in c.name]
    monkeypatch.setenv("TORCH_NPU_DISABLED_WARNING", "1")
    (note,) = [c for c in run.checks() if "incomplete" in c.name]
    assert note.passed is None and "TORCH_NPU_DISABLED_WARNING=1" in note.value
    assert "may be incomplete" in probes.summary(run)
