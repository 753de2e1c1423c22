"""Device selection, dtypes, timer, memory, properties, versions and fallback capture.

No GPU/NPU here: "no torch_npu", "one CUDA device" etc. are simulated by monkeypatching the
probe functions (npu.import_torch_npu, selection._probe_npu, selection._probe_cuda), never torch itself.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import time
import types
import warnings

import pytest
import torch

from helpers import device
from helpers.device import NpuImport, Selection, facts, npu, selection
from helpers.device import backends as backends_mod
from helpers.device import graph as graph_mod
from helpers.device import memory as memory_mod
from helpers.errors import DeviceError

MIB = 1024 * 1024
TORCH_BASE = torch.__version__.split("+")[0]
NPU_LINE = (
    "[W610 18:26:03.055846726 VariableFallbackKernel.cpp:250] Warning: CAUTION: The operator "
    "'aten::{op}' is not currently supported on the NPU backend and will fall back to run on "
    "the CPU. This may have performance implications. (function npu_cpu_fallback)"
)


# ---- simulated machines -----------------------------------------------------------------


@pytest.fixture
def no_npu(monkeypatch):
    monkeypatch.setattr(npu, "import_torch_npu",
                        lambda: NpuImport(None, installed=False, error="torch_npu not installed"))


@pytest.fixture
def broken_npu(monkeypatch):
    err = "torch_npu failed to import (OSError: libascendcl.so: cannot open shared object file)"
    monkeypatch.setattr(npu, "import_torch_npu",
                        lambda: NpuImport(None, installed=True, error=err))


@pytest.fixture
def one_npu(monkeypatch):
    # a module object stands for the imported torch_npu; only the count probe is consulted
    monkeypatch.setattr(npu, "import_torch_npu",
                        lambda: NpuImport(types.ModuleType("torch_npu"), installed=True))
    monkeypatch.setattr(selection, "_probe_npu", lambda: (1, ""))


def _cuda(monkeypatch, count: int) -> None:
    why = "" if count else "CUDA not available (no GPU or driver visible to torch)"
    monkeypatch.setattr(selection, "_probe_cuda", lambda: (count, why))


def _sel(backend: str) -> Selection:
    idx = None if backend == "cpu" else 0
    return Selection(backend, torch.device("cpu"), backend, idx, "test")


# ---- selection --------------------------------------------------------------------------


def test_auto_without_accelerators_picks_cpu_and_says_why(no_npu, monkeypatch):
    _cuda(monkeypatch, 0)
    sel = device.select("auto")
    assert (sel.backend, sel.device, sel.index) == ("cpu", torch.device("cpu"), None)
    assert sel.reason == ("torch_npu not installed; CUDA not available (no GPU or driver visible "
                          "to torch); using cpu")


def test_auto_on_this_machine_reports_what_it_saw():
    sel = device.select("auto")
    assert sel.requested == "auto"
    assert sel.backend in device.BACKENDS
    assert "using" in sel.reason


def test_auto_prefers_cuda_when_no_npu(no_npu, monkeypatch):
    _cuda(monkeypatch, 2)
    sel = device.select("auto")
    assert (sel.backend, sel.index, str(sel.device)) == ("cuda", 0, "cuda:0")
    assert "torch_npu not installed" in sel.reason and "2 device(s)" in sel.reason


def test_auto_reports_a_broken_torch_npu_instead_of_raising(broken_npu, monkeypatch):
    _cuda(monkeypatch, 0)
    sel = device.select("auto")
    assert sel.backend == "cpu"
    assert "libascendcl.so" in sel.reason


def test_explicit_cpu_and_case_and_spaces():
    assert device.select(" CPU ").backend == "cpu"
    assert device.select("cpu:0").device == torch.device("cpu")
    with pytest.raises(DeviceError, match="use DEVICE=cpu"):
        device.select("cpu:1")


def test_npu_without_torch_npu_says_how_to_install(no_npu):
    with pytest.raises(DeviceError) as err:
        device.select("npu:0")
    msg = str(err.value)
    assert "torch_npu is not installed" in msg
    assert f"matches torch {TORCH_BASE}" in msg and f"torch-npu=={TORCH_BASE}" in msg
    assert "set_env.sh" in msg


def test_npu_with_broken_install_names_the_import_error(broken_npu):
    with pytest.raises(DeviceError, match="libascendcl.so.*set_env.sh"):
        device.select("npu")


def test_npu_index_past_the_count_names_the_count(one_npu):
    with pytest.raises(DeviceError, match=r"1 NPU\(s\) \(valid: npu:0 \.\. npu:0\)"):
        device.select("npu:3")


def test_cuda_index_past_the_count_names_the_count(monkeypatch):
    _cuda(monkeypatch, 1)
    with pytest.raises(DeviceError) as err:
        device.select("cuda:3")
    assert "1 CUDA device(s)" in str(err.value) and "cuda:0 .. cuda:0" in str(err.value)
    sel = device.select("cuda")
    assert (sel.backend, sel.index, str(sel.device)) == ("cuda", 0, "cuda:0")


def test_cuda_on_a_machine_without_cuda_suggests_auto_or_cpu(monkeypatch):
    _cuda(monkeypatch, 0)
    with pytest.raises(DeviceError) as err:
        device.select("cuda")
    assert "CUDA not available" in str(err.value)
    assert "DEVICE=auto" in str(err.value) and "DEVICE=cpu" in str(err.value)


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "npu:-1", "cuda:x", "", "cuda:0:1", "mps"])
def test_bad_syntax_lists_the_valid_forms(bad):
    with pytest.raises(DeviceError) as err:
        device.select(bad)
    assert "auto, cpu, cuda, cuda:N, npu, npu:N" in str(err.value)


def test_selection_as_plain_json_values():
    d = device.select("cpu").as_dict()
    assert d == {"requested": "cpu", "device": "cpu", "backend": "cpu", "index": None,
                 "reason": "requested cpu"}


def test_device_error_is_a_value_error():
    assert issubclass(DeviceError, ValueError)


def test_device_count(no_npu, monkeypatch):
    _cuda(monkeypatch, 4)
    assert device.device_count("cpu") == 1
    assert device.device_count("cuda") == 4
    assert device.device_count("npu") == 0
    with pytest.raises(DeviceError, match="unknown backend"):
        device.device_count("tpu")


def test_npu_backend_without_torch_npu_is_a_clear_error(no_npu):
    with pytest.raises(DeviceError, match="torch_npu not installed"):
        device.backend(_sel("npu"))


# ---- dtypes -----------------------------------------------------------------------------


def test_auto_dtype_is_bfloat16_on_cpu_and_float32_on_accelerators(monkeypatch):
    monkeypatch.setattr(selection, "_cuda_bf16_supported", lambda index=0: True)
    monkeypatch.setattr(selection, "_npu_bf16_supported", lambda index=0: True)
    assert device.resolve_dtype(_sel("cpu"), "auto") is torch.bfloat16
    assert device.resolve_dtype(_sel("cuda"), "auto") is torch.float32
    assert device.resolve_dtype(_sel("npu"), "auto") is torch.float32
    assert device.resolve_dtype(_sel("cpu"), "float16") is torch.float16
    assert device.resolve_dtype(_sel("npu"), "BFloat16") is torch.bfloat16


def test_dtype_the_device_cannot_run_names_the_supported_ones(monkeypatch):
    monkeypatch.setattr(selection, "_cuda_bf16_supported", lambda index=0: False)
    with pytest.raises(DeviceError) as err:
        device.resolve_dtype(_sel("cuda"), "bfloat16")
    assert "supported dtypes there: float32, float16, float64" in str(err.value)
    with pytest.raises(DeviceError, match="float32, bfloat16, float16, float64"):
        device.resolve_dtype(_sel("cpu"), "fp8")


def test_dtype_support_per_backend(monkeypatch):
    monkeypatch.setattr(selection, "_cuda_bf16_supported", lambda index=0: True)
    monkeypatch.setattr(selection, "_npu_bf16_supported", lambda index=0: True)
    assert device.dtype_support("npu")["float64"] == "limited"
    assert set(device.supported_dtypes("cuda")) == {"float32", "float16", "float64", "bfloat16"}
    assert device.backend(_sel("cpu")).supported_dtypes() == [
        "float32", "bfloat16", "float16", "float64"]


# ---- timer, memory, properties on cpu ---------------------------------------------------


def test_timer_never_measures_a_sleep_short():
    be = device.backend(device.select("cpu"))
    with be.timer() as t:
        time.sleep(0.2)
    assert 0.2 <= t.seconds < 2.0  # a busy host adds time, never removes it
    assert t.host_seconds == t.seconds
    assert "perf_counter" in t.protocol


def test_timer_records_even_when_the_block_raises():
    be = device.backend(device.select("cpu"))
    with pytest.raises(RuntimeError), be.timer() as t:
        time.sleep(0.05)
        raise RuntimeError("boom")
    assert 0.05 <= t.seconds < 2.0  # recorded although the block raised


def test_cpu_memory_tracks_a_256_mib_tensor():
    be = device.backend(device.select("cpu"))
    gc.collect()
    before = be.memory()
    assert before["allocated"] is None and before["peak_allocated"] is None
    x = torch.ones(256 * MIB // 4, dtype=torch.float32)  # [64Mi] float32 = 256 MiB, written
    after = be.memory()
    grew = after["host_rss"] - before["host_rss"]
    assert grew == pytest.approx(256 * MIB, rel=0.10)
    assert after["peak_rss"] >= after["host_rss"] * 0.99
    del x


@pytest.mark.skipif(memory_mod.vm_hwm() is None, reason="VmHWM is Linux-only")
def test_reset_peak_rewinds_the_host_peak_on_linux():
    be = device.backend(device.select("cpu"))
    x = torch.ones(128 * MIB // 4)  # 128 MiB
    del x
    gc.collect()
    high = be.memory()["peak_rss_since_reset"]
    be.reset_peak()
    low = be.memory()
    assert low["peak_rss_since_reset"] < high - 64 * MIB
    assert low["peak_rss_since_reset"] >= low["host_rss"] * 0.9


def test_cpu_properties():
    props = device.backend(device.select("cpu")).properties()
    assert props["name"] and props["name"] != "unknown cpu"
    assert props["logical_cores"] >= 1 and props["physical_cores"] >= 1
    assert props["total_memory"] > 256 * MIB


# ---- versions and numeric settings ------------------------------------------------------


def test_stack_versions_are_strings_and_never_raise(no_npu, monkeypatch):
    for key in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"):
        monkeypatch.delenv(key, raising=False)
    v = device.stack_versions()
    assert set(v) == {"torch", "torch_npu", "cann", "cuda_runtime", "rocm_hip", "cudnn"}
    assert all(isinstance(s, str) and s for s in v.values())
    assert v["torch"] == torch.__version__
    if torch.version.cuda is None:
        assert v["cuda_runtime"] == v["cudnn"] == "not installed"


def test_cann_version_read_from_the_toolkit_install_info(no_npu, monkeypatch, tmp_path):
    info = tmp_path / "x86_64-linux" / "ascend_toolkit_install.info"
    info.parent.mkdir()
    info.write_text("package_name=Ascend-cann-toolkit\nversion=8.5.1\narch=x86_64\n")
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(tmp_path))
    assert device.stack_versions()["cann"] == "8.5.1"


@pytest.mark.parametrize("raw, text", [(90100, "9.1.0"), (8902, "8.9.2"), (7605, "7.6.5")])
def test_cudnn_version_format(raw, text):
    assert facts.format_cudnn_version(raw) == text


def test_numeric_settings_reports_the_live_switches():
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        s = device.numeric_settings(device.select("cpu"))
    finally:
        torch.set_float32_matmul_precision(old)
    assert s["float32_matmul_precision"] == "high"
    assert s["intra_op_threads"] == torch.get_num_threads() >= 1
    assert isinstance(s["deterministic_algorithms"], bool)
    assert isinstance(s["cuda_matmul_allow_tf32"], bool) and isinstance(s["cudnn_allow_tf32"], bool)
    assert s["npu_matmul_allow_hf32"] is None  # no NPU selected


# ---- fallback capture -------------------------------------------------------------------


def test_parse_fallback_variants():
    text = "\n".join([
        NPU_LINE.format(op="isin.Tensor_Tensor"),
        # the bare message, without the c10 log prefix or the CAUTION word
        "The operator 'aten::_fft_r2c' is not currently supported on the NPU backend and "
        "will fall back to run on the CPU",
        # the same operator again (torch_npu warns once per operator, but two runs may repeat)
        NPU_LINE.format(op="isin.Tensor_Tensor"),
        # as a Python warning, wrapped over two lines
        "UserWarning: The operator 'aten::bitwise_left_shift.Tensor_out' is not currently\n"
        "  supported on the NPU backend and will fall back to run on the CPU.",
        # not a fallback: a hard error for a missing kernel
        "NotImplementedError: Could not run 'aten::foo' with arguments from the 'NPU' backend.",
    ])
    assert device.parse_fallbacks(text) == [
        "aten::isin.Tensor_Tensor", "aten::_fft_r2c", "aten::bitwise_left_shift.Tensor_out"]
    assert device.parse_fallbacks("no warnings here") == []


def test_capture_fallbacks_from_a_real_child_process(capfd):
    script = (
        "import os\n"
        f"line = {NPU_LINE!r}\n"
        "os.write(2, (line.format(op='angle') + '\\n').encode())\n"
        "os.write(2, b'some other C++ log line\\n')\n"
        "os.write(2, (line.format(op='polar.out') + '\\n').encode())\n"
    )
    with device.capture_fallbacks() as fb:
        subprocess.run([sys.executable, "-c", script], check=True)  # inherits our fd 2
    assert fb.operators == ["aten::angle", "aten::polar.out"]
    assert "some other C++ log line" in fb.text
    # the captured text is written again to the real stderr once the block ends
    assert "some other C++ log line" in capfd.readouterr().err


def test_capture_fallbacks_sees_python_warnings_and_restores_fd2_on_error(capfd, recwarn):
    msg = ("The operator 'aten::complex_abs' is not currently supported on the NPU backend "
           "and will fall back to run on the CPU.")
    with pytest.raises(KeyError), device.capture_fallbacks() as fb:
        warnings.warn(msg, UserWarning, stacklevel=1)
        raise KeyError("inside")
    assert fb.operators == ["aten::complex_abs"]
    assert [str(w.message) for w in recwarn] == [msg]  # shown again after the block
    subprocess.run([sys.executable, "-c", "import os; os.write(2, b'after-block')"], check=True)
    assert "after-block" in capfd.readouterr().err  # fd 2 is the real stderr again


def test_capture_flushes_python_level_stderr_into_the_capture():
    # a fresh interpreter, where sys.stderr is a buffered stream on fd 2 (pytest replaces it)
    script = (
        "import json, sys\n"
        "from helpers import device\n"
        "with device.capture_fallbacks() as fb:\n"
        f"    sys.stderr.write({NPU_LINE.format(op='stft')!r})  # no newline: stays buffered\n"
        "print(json.dumps(fb.operators))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # keep it buffered
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == '["aten::stft"]'
    assert "aten::stft" in out.stderr  # re-emitted to the real stderr


def test_numeric_settings_survive_the_new_fp32_precision_api():
    # once torch's new TF32 API is used, reading a legacy flag raises: the record says so
    old = torch.backends.cuda.matmul.fp32_precision
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        out = device.numeric_settings(device.select("cpu"))
    finally:
        torch.backends.cuda.matmul.fp32_precision = old
    assert out["cuda_matmul_fp32_precision"] == "tf32"
    assert str(out["cuda_matmul_allow_tf32"]).startswith("unreadable")
    assert out["deterministic_algorithms"] in (True, False)


def test_full_float32_turns_tf32_off_for_the_block_and_restores_it():
    with device.full_float32(torch.device("cpu")) as set_:
        assert set_ == []  # the CPU has no TF32 / HF32
    with device.full_float32(torch.device("cuda"), enabled=False) as set_:
        assert set_ == []  # knob tf32 = True: left as it is
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    try:
        matmul.fp32_precision = conv.fp32_precision = "tf32"  # the flags are host-side only
        with device.full_float32(torch.device("cuda")) as set_:
            assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
            assert set_ == ["fp32_precision=ieee", "fp32_precision=ieee"]
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    finally:
        matmul.fp32_precision, conv.fp32_precision = before


def test_settings_that_can_hide_fallback_warnings_are_named():
    assert device.hiding_settings({}) == []
    assert device.hiding_settings({"RANK": "0", "TORCH_NPU_DISABLED_WARNING": "0"}) == []
    env = {"RANK": "1", "TORCH_NPU_DISABLED_WARNING": "1", "TORCH_CPP_LOG_LEVEL": "ERROR"}
    assert device.hiding_settings(env) == ["TORCH_NPU_DISABLED_WARNING=1", "RANK=1",
                                           "TORCH_CPP_LOG_LEVEL=ERROR"]


# ---- bfloat16 asked of the device, ROCm builds ---------------------------------------------


def test_bfloat16_is_asked_of_the_selected_device(monkeypatch):
    asked = []

    def cuda_bf16(index=0):
        asked.append(index)
        return index == 0  # device 0 has native bfloat16, device 1 does not

    monkeypatch.setattr(selection, "_cuda_bf16_supported", cuda_bf16)
    assert "bfloat16" in device.supported_dtypes("cuda", 0)
    assert "bfloat16" not in device.supported_dtypes("cuda", 1)
    sel1 = Selection("cuda:1", torch.device("cuda", 1), "cuda", 1, "test")
    with pytest.raises(DeviceError, match="cannot run on cuda:1"):
        device.resolve_dtype(sel1, "bfloat16")
    assert asked == [0, 1, 1]
    monkeypatch.setattr(selection, "_npu_bf16_supported", lambda index=0: False)
    assert device.supported_dtypes("npu") == ["float32", "float16", "float64"]


def test_a_rocm_build_is_not_called_a_build_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", "6.2.41133", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    count, why = selection._probe_cuda()
    assert count == 0 and "ROCm build (HIP 6.2.41133)" in why and "without CUDA" not in why
    monkeypatch.setattr(torch.version, "hip", None)
    assert "build without CUDA or ROCm" in selection._probe_cuda()[1]


# ---- every device of a placement (a fake backend API with two devices) ---------------------


class FakeDeviceApi:
    """Stands for torch.cuda with two devices: per-device allocator figures, and a log of the
    calls (synchronize, current device, empty_cache, peak resets) the backend makes."""

    def __init__(self) -> None:
        self.mib = {0: [100, 150, 300, 400], 1: [40, 60, 90, 120]}  # alloc, reserved, peaks
        self.calls: list[str] = []
        self.current = 0

    def set_device(self, index):
        self.current = index
        self.calls.append(f"set_device {index}")

    def synchronize(self, dev):
        self.calls.append(f"sync {dev}")

    def _get(self, dev, i):
        return self.mib[torch.device(dev).index][i] * MIB

    def memory_allocated(self, dev):
        return self._get(dev, 0)

    def memory_reserved(self, dev):
        return self._get(dev, 1)

    def max_memory_allocated(self, dev):
        return self._get(dev, 2)

    def max_memory_reserved(self, dev):
        return self._get(dev, 3)

    def reset_peak_memory_stats(self, dev):
        self.calls.append(f"reset {dev}")
        i = torch.device(dev).index
        self.mib[i][2], self.mib[i][3] = self.mib[i][0], self.mib[i][1]

    def empty_cache(self):
        self.calls.append(f"empty_cache on {self.current}")
        self.mib[self.current][1] = self.mib[self.current][0]  # cached blocks returned

    @contextlib.contextmanager
    def device(self, dev):
        before, self.current = self.current, torch.device(dev).index
        try:
            yield
        finally:
            self.current = before


@pytest.fixture
def two_gpus(monkeypatch):
    api = FakeDeviceApi()
    monkeypatch.setattr(backends_mod, "_device_api", lambda name: api if name == "cuda" else None)
    sel = Selection("cuda:0", torch.device("cuda", 0), "cuda", 0, "test")
    return api, device.backend(sel)


def test_a_backend_over_two_devices_gets_one_memory_row_each_and_a_total(two_gpus):
    api, single = two_gpus
    assert single.devices == (torch.device("cuda", 0),) and not single.spread
    be = single.spanning(["cuda:1", "cuda:0", "cpu"])  # a DEVICE_MAP=auto plan with cpu offload
    assert be.devices == (torch.device("cuda", 0), torch.device("cuda", 1)) and be.spread
    rows = be.memory_rows()
    assert [r["device"] for r in rows] == ["cuda:0", "cuda:1", "total"]
    assert [r["allocated"] // MIB for r in rows] == [100, 40, 140]
    assert [r["peak_reserved"] // MIB for r in rows] == [400, 120, 520]
    mem = be.memory()
    assert mem["peak_allocated"] == 390 * MIB and mem["host_rss"] > 0  # totals, flat
    assert single.memory()["peak_allocated"] == 300 * MIB  # the first card alone
    assert [r["device"] for r in single.memory_rows()] == ["cuda:0"]  # no total for one


def test_synchronize_and_peak_reset_cover_every_device(two_gpus):
    api, single = two_gpus
    be = single.spanning(["cuda:0", "cuda:1"])
    api.calls.clear()
    with be.timer() as t:
        pass
    assert api.calls == ["sync cuda:0", "sync cuda:1", "sync cuda:0", "sync cuda:1"]
    assert t.seconds == t.host_seconds  # events cannot span devices: host time between syncs
    assert "cuda:0, cuda:1" in be.timer_protocol and "perf_counter" in be.timer_protocol
    api.calls.clear()
    be.reset_peak()
    # the cache of each device is emptied (each made current in turn) before its peaks reset
    assert api.calls == ["sync cuda:0", "sync cuda:1", "empty_cache on 0", "empty_cache on 1",
                         "reset cuda:0", "reset cuda:1"]
    rows = be.memory_rows()
    assert [r["peak_reserved"] // MIB for r in rows] == [100, 40, 140]  # = allocated: no stale cache


def test_the_selected_index_becomes_the_current_device(two_gpus, monkeypatch):
    api, _ = two_gpus
    device.backend(Selection("cuda:1", torch.device("cuda", 1), "cuda", 1, "test"))
    assert api.calls[-1] == "set_device 1" and api.current == 1


# ---- graph capture: what was captured ------------------------------------------------------


@pytest.mark.parametrize("name, supported", [
    ("Ascend910B2", True), ("Ascend910B4-1", True), ("Ascend910_9392", True),
    ("Ascend910A", False), ("Ascend910B", False), ("Ascend910ProB", False),
    ("Ascend310P3", None),
])
def test_aclgraph_needs_atlas_a2_or_a3(name, supported):
    got, why = graph_mod.aclgraph_support(name)
    assert got is supported and name in why
    if supported is False:
        backend, _, how = graph_mod.graph_compile("npu", name)
        assert backend is None and "Atlas A2 / A3" in how


class FakeGraph:
    """Stands for torch.cuda.CUDAGraph: capture_end and replay are what the watch counts."""

    def capture_end(self):
        return "captured"

    def replay(self):
        return "replayed"


def test_capture_watch_counts_graphs_breaks_and_replays():
    def step(x):
        y = x * 2
        torch._dynamo.graph_break()  # a real graph break, recorded by dynamo
        return y + 1

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="eager")
    original = FakeGraph.replay
    with graph_mod.CaptureWatch("cuda", FakeGraph) as watch:
        compiled(torch.ones(4))
        g = FakeGraph()
        assert g.capture_end() == "captured" and g.replay() == "replayed"
        g.replay()
    assert FakeGraph.replay is original  # restored after the block
    cap = watch.report(compiled=True)
    assert (cap.captures, cap.replays) == (1, 2)
    assert cap.unique_graphs >= 2 and sum(cap.graph_breaks.values()) >= 1
    assert not cap.verified and any("graph break" in p for p in cap.problems)
    assert "CUDA graphs" not in cap.label and "not verified" in cap.label


def test_capture_watch_without_replays_or_compile_is_not_verified():
    with graph_mod.CaptureWatch("cuda", FakeGraph) as watch:
        pass
    cap = watch.report(compiled=False)
    assert any("declined" in p for p in cap.problems)
    assert any("no CUDA graphs replay" in p for p in cap.problems)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: x * 3, backend="eager")
    with graph_mod.CaptureWatch("cuda", FakeGraph) as watch:
        compiled(torch.ones(2))
        FakeGraph().replay()
    ok = watch.report(compiled=True)
    assert ok.verified, ok.problems
    assert ok.label == "graph: static cache + CUDA graphs"
    cpu = graph_mod.CaptureWatch("cpu", None)
    with cpu:
        pass
    assert cpu.report(compiled=None).captures is None


def test_model_loading_measures_every_device_the_model_is_placed_on(two_gpus):
    """Stage 2 reads memory after load over the placement (DEVICE_MAP=auto over two cards)."""
    from types import SimpleNamespace

    from helpers.stages import model_loading

    _, single = two_gpus
    loaded = SimpleNamespace(placement={"lm.layers.0": "cuda:0", "lm.layers.1": "cuda:1"})
    placed = model_loading.placement_backend(SimpleNamespace(backend=single), loaded)
    table = model_loading.device_memory_table(placed)
    assert list(table.index) == ["cuda:0", "cuda:1", "total"]
    assert list(table["allocated"]) == [round(n * MIB / 1e6, 1) for n in (100, 40, 140)]  # MB
    one = SimpleNamespace(placement={"lm": "cuda:0"})
    assert model_loading.device_memory_table(
        model_loading.placement_backend(SimpleNamespace(backend=single), one)) is None
