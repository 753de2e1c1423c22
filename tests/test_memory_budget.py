"""Will it fit? The memory estimate of each side against what is free, the refusal before a
load, the chosen way out, and the estimate held against the measured peak RSS of a real load.
Also the performance stage's memory reader sanity check, which must measure what it claims
after heavy allocations and fail when the reader is wrong."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import compat, models
from helpers import device as devices
from helpers.config import RunConfig
from helpers.device import memory
from helpers.errors import ConfigError, MemoryBudgetError
from helpers.models import footprint
from helpers.runner import forkserver, kernels
from helpers.stages import kit
from helpers.stages.performance.sections import allocation_probe, memory_check
from helpers.stages.performance.settings import MIB

GIB = 2**30
GPA, COVO = models.get("gpa"), models.get("covo-audio-chat")


def in_a_forked_process(tmp_path: Path, fn: Callable[..., None], *args: Any) -> dict:
    """fn(out, *args) run in a process forked by this process's fork server (the one its
    report runs keep, made or grown here: torch and the stages' modules imported, nothing run),
    as each stage kernel of a report is; what fn wrote to `out` as JSON, or its traceback."""
    server = forkserver.kept(FORKED_IMPORTS, kernels._python_flags())
    sock = server.wait_ready(needs=FORKED_IMPORTS)
    assert sock is not None, "the fork server did not start"
    out = tmp_path / f"{fn.__name__}.json"
    child = forkserver.Forked(sock, f"{__name__}:_forked_call",
                              [str(out), fn.__name__, *args], [])
    child.join(timeout=1500)
    assert child.exitcode == 0, out.read_text() if out.is_file() else child.exitcode
    return json.loads(out.read_text())


FORKED_IMPORTS = ["torch", "helpers.stages.kit"]


def _forked_call(out: str, name: str, *args: Any) -> None:
    try:
        globals()[name](out, *args)
    except BaseException:
        import traceback

        Path(out).write_text(traceback.format_exc())
        raise


@pytest.fixture
def free_memory(monkeypatch):
    """Hold the host to a given free memory (HELPERS_FREE_MEMORY), as a memory limit would."""
    def hold(text: str) -> None:
        monkeypatch.setenv(memory.FREE_MEMORY_ENV, text)
    return hold


# ---- the figures ------------------------------------------------------------------------------


def test_weights_and_kv_cache_are_counted_from_the_configs() -> None:
    est = footprint.estimate(GPA, "full-shape", "reference", "cpu", "float32", free={})
    weights, buffers, kv, act = est.lines
    assert weights.bytes == 1_127_993_612 * 4  # python -m helpers.models describe gpa
    # 28 layers x (K, V) x 8 KV heads x head_dim 128 x 2560 positions x 4 bytes, by hand
    assert kv.bytes == 28 * 2 * 8 * 128 * 2560 * 4 == 587_202_560
    assert 0.1 * GIB < act.bytes < 0.5 * GIB
    gold = footprint.estimate(GPA, "full-shape", "golden", "cpu", "float64", free={})
    assert gold.lines[0].bytes == 1_127_993_612 * 8 and gold.lines[2].bytes == 2 * kv.bytes


def test_an_accelerator_side_needs_the_host_for_the_float32_pass() -> None:
    est = footprint.estimate(GPA, "full-shape", "target", "cuda:0", "bfloat16", free={})
    assert est.need("device") > 1_127_993_612 * 2
    assert est.need("host") == 1_127_993_612 * 4  # weights.materialize: float32 on the host


def test_covo_audio_chat_float32_reference_does_not_fit_in_24_gib(free_memory) -> None:
    free_memory("24GiB")
    free = {"host": memory.host_free()}
    est = footprint.estimate(COVO, "full-shape", "reference", "cpu", "float32",
                             free=free)
    assert est.lines[0].bytes == 8_768_979_090 * 4  # 35.1 GB: 8.40B model + token2wav
    assert not est.fits and est.short("host") > 10 * GIB
    bf16 = footprint.estimate(COVO, "full-shape", "reference", "cpu", "bfloat16",
                              free=free)
    # random weights pass through float32 on the host, so bfloat16 does not help at full shape
    assert bf16.need("host") >= est.lines[0].bytes and not bf16.fits


# ---- what is free -------------------------------------------------------------------------------


def test_free_memory_honours_the_override_and_rejects_a_bad_one(free_memory) -> None:
    assert memory.parse_size("1.5GiB") == int(1.5 * GIB) and memory.parse_size("512") == 512
    free_memory("100MiB")
    assert memory.host_free() == memory.FreeMemory(100 * MIB, "HELPERS_FREE_MEMORY=100MiB")
    free_memory("lots")
    with pytest.raises(ConfigError, match="512MiB"):
        memory.host_free()


def test_a_cgroup_limit_caps_the_free_memory(tmp_path, monkeypatch) -> None:
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text(f"{2 * GIB}\n")
    usage.write_text(f"{GIB + 5}\n")
    monkeypatch.setattr(memory, "CGROUP_LIMITS", ((str(limit), str(usage)),))
    assert memory.cgroup_free() == GIB - 5
    free = memory.host_free()
    assert free.bytes == GIB - 5 and "cgroup" in free.source
    limit.write_text("max\n")
    assert memory.cgroup_free() is None


# ---- refused before loading, or the way out taken ---------------------------------------------


def test_a_side_that_cannot_fit_is_refused_with_the_figures_and_the_ways_out(
        free_memory) -> None:
    free_memory("2GiB")
    cfg = RunConfig.from_params(model="gpa", profile="full-shape")
    rss = memory.host_rss()
    with pytest.raises(MemoryBudgetError) as info:
        kit.load(cfg, kit.reference_side())
    text = str(info.value)
    assert memory.host_rss() - rss < 256 * MIB  # 4.2 GiB of weights: never allocated
    assert "reference cpu float32 cannot be held" in text and "not loaded" in text
    assert "needs 5.16 GiB, free 2.00 GiB (HELPERS_FREE_MEMORY=2GiB" in text
    for way in ("REFERENCE=<run>", "BASELINE=<run>", "REFERENCE_FIT=offload: not open here "
                "(the full-shape profile", "REFERENCE_FIT=bfloat16: the reference in bfloat16 (host"):
        assert way in text


def test_the_target_is_refused_too_with_its_own_ways_out(free_memory) -> None:
    free_memory("1GiB")
    cfg = RunConfig.from_params(model="gpa", profile="full-shape", device="cpu")
    with pytest.raises(MemoryBudgetError, match="DEVICE_MAP=auto") as info:
        kit.target(cfg).load()
    assert "REFERENCE_FIT" not in str(info.value)


def test_reference_fit_bfloat16_takes_the_bfloat16_reference(free_memory) -> None:
    need = {d: footprint.estimate(GPA, "tiny", "reference", "cpu", d, free={}).need("host")
            for d in ("float32", "bfloat16")}
    between = (need["float32"] + need["bfloat16"]) // 2
    free_memory(str(int(between / (1 - footprint.HEADROOM))))
    stop = RunConfig.from_params(model="gpa")
    with pytest.raises(MemoryBudgetError, match="short by"):
        kit.fitted(stop, kit.reference_side())  # REFERENCE_FIT=stop, the default
    cfg = RunConfig.from_params(model="gpa", reference_fit="bfloat16")
    side = kit.fitted(cfg, kit.reference_side())
    assert side.dtype == torch.bfloat16 and side.role == "reference"
    from helpers.stages import accuracy_parity as accuracy

    p = accuracy.plan(kit.target(cfg), new_tokens=0, languages="en")
    assert p.reference.dtype == torch.bfloat16
    assert footprint.BFLOAT16_COST in p.describe()


@pytest.mark.skipif(not compat.disk_offload_supported(),
                    reason="disk offload loads under transformers 5 only (helpers.compat)")
def test_reference_fit_offload_reads_the_weights_from_disk_with_the_same_numbers(
        free_memory) -> None:
    cfg = RunConfig.from_params(model="gpa", reference_fit="offload")
    ids = torch.randint(0, 1000, (1, 12))  # [B, S]
    whole = kit.load(cfg, kit.reference_side())
    with torch.no_grad():
        want = whole.lm(input_ids=ids).logits  # [B, S, V]
    del whole
    off = footprint.estimate(GPA, "tiny", "reference", "cpu", "float32", offload=True,
                             free={})
    besides = off.need("host") - off.lines[0].bytes
    others = sum(p.numel() for n in ("speech_tokenizer", "codec")
                 for p in models.get("gpa").build("tiny")[n].parameters()) * 4
    free_memory(str(int((besides + others + 2 * MIB) / (1 - footprint.HEADROOM))))
    side = kit.fitted(cfg, kit.reference_side())
    assert side.device_map == kit.OFFLOAD and side.dtype == torch.float32
    loaded = kit.load(cfg, side)
    assert "disk" in loaded.placement.values() and "disk offload" in " ".join(loaded.notes)
    with torch.no_grad():
        got = loaded.lm(input_ids=ids).logits
    assert torch.equal(got, want)


def test_reference_fit_must_be_one_of_the_ways() -> None:
    with pytest.raises(ConfigError, match="reference_fit 'swap'"):
        RunConfig.from_strings({"REFERENCE_FIT": "swap"})


def _limited_load(out: str) -> None:
    """In a process of its own: RLIMIT_AS (as prlimit --as sets it) at 512 MiB above what the
    process maps, then the full-shape reference's load."""
    import resource

    import psutil

    cfg = RunConfig.from_params(model="gpa", profile="full-shape")
    kit.estimate(cfg, kit.reference_side())  # configs read before the limit
    vms = psutil.Process().memory_info().vms
    resource.setrlimit(resource.RLIMIT_AS, (vms + 512 * 2**20, resource.RLIM_INFINITY))
    try:
        kit.load(cfg, kit.reference_side())
        said = "LOADED"
    except MemoryBudgetError as exc:
        said = f"REFUSED {exc}"
    Path(out).write_text(json.dumps({"said": said}))


@pytest.mark.slow  # a process of its own, forked from the fork server (imports made)
def test_an_address_space_limit_stops_a_load_before_it_starts(tmp_path) -> None:
    """A real kernel limit in a process of its own, as a stage kernel is (forked by the fork
    server): the load is refused by the estimate, not failed half-way by the allocator."""
    said = in_a_forked_process(tmp_path, _limited_load)["said"]
    assert said.startswith("REFUSED") and "RLIMIT_AS" in said, said


# ---- the estimate against the measured peak -----------------------------------------------------

def _measure(out: str, model: str, profile: str, dtype: str, positions: int) -> None:
    """In a process of its own: the side's load and one prefill; the RSS before and the peak."""
    import gc

    cfg = RunConfig.from_params(model=model, profile=profile)
    side = kit.reference_side(getattr(torch, dtype))
    models.get(model).import_code(profile)
    kit.estimate(cfg, side)
    gc.collect()
    before = memory.host_rss()
    memory.reset_vm_hwm()
    loaded = kit.load(cfg, side)
    ids = torch.randint(0, 1000, (1, positions))
    with torch.no_grad():  # one prefill: the KV cache of `positions`, the kept logits
        out_ = loaded.lm(input_ids=ids, use_cache=True, logits_to_keep=64)
        kept = (out_.logits.float(), out_.logits.double())
    peak = memory.vm_hwm()
    del kept
    Path(out).write_text(json.dumps({"before": before, "peak": peak}))


def measured_peak(tmp_path: Path, model: str, profile: str, dtype: str, positions: int) -> int:
    """Peak RSS growth of a process of its own, forked from the fork server as a stage kernel
    is, that loads the side and runs one prefill, bytes."""
    got = in_a_forked_process(tmp_path, _measure, model, profile, dtype, positions)
    return got["peak"] - got["before"]


@pytest.mark.skipif(memory.vm_hwm() is None, reason="the peak is read from Linux's VmHWM")
@pytest.mark.slow
@pytest.mark.parametrize("profile", ["tiny", pytest.param("full-shape", marks=pytest.mark.slow)])
def test_the_estimate_covers_the_measured_peak(profile: str, tmp_path) -> None:
    est = footprint.estimate(GPA, profile, "reference", "cpu", "float32", free={},
                             positions=1024, prefill=1024)
    peak = measured_peak(tmp_path, "gpa", profile, "float32", 1024)
    # close below what a load takes at most (footprint.HEADROOM, 10 % of the free memory, is
    # kept back for that), and not so far above that a run which fits is refused (at tiny the
    # 1024-position score matrix, tens of MiB, outweighs the model: 64 MiB allowed there)
    high = max(1.35 * peak, peak + 64 * MIB)
    assert 0.95 * peak <= est.need("host") <= high, (est.text(), peak / GIB)


# ---- the performance stage's memory reader ------------------------------------------------------


@pytest.mark.slow  # a fresh Python process that imports torch
def test_the_memory_reader_measures_64_mib_after_the_heap_kept_freed_pages() -> None:
    """glibc told to serve 256 MiB from its heap and never trim it (mallopt), a 128 MiB tensor
    freed: a new 64 MiB tensor reuses resident pages and the RSS does not move; the stage's
    probe still measures 64 MiB."""
    code = textwrap.dedent("""
        import ctypes, json, torch
        from helpers import device as devices
        from helpers.stages.performance.sections import allocation_probe
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD: big blocks from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: freed heap pages stay resident
        be = devices.backend(devices.select("cpu"))
        x = torch.ones(128 << 18); del x
        before = be.memory()["host_rss"]; y = torch.ones(64 << 18)
        naive = be.memory()["host_rss"] - before; del y
        print(json.dumps({"naive": naive, **allocation_probe(be, torch.device("cpu"))}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    if out.returncode and "libc.so.6" in out.stderr:
        pytest.skip("not glibc")
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["naive"] < 8 * MIB  # the old reading: a tensor's RSS delta shows ~0
    assert got["relative_error"] <= 0.10 and memory_check(got).passed


class PeakAsRss(devices.Backend):
    """A wrong reader: the lifetime peak RSS where the current RSS belongs."""

    def memory(self) -> dict:
        out = super().memory()
        out["host_rss"] = out["peak_rss"]
        return out


def test_a_wrong_memory_reader_fails_the_check() -> None:
    cpu = devices.select("cpu")
    right = allocation_probe(devices.backend(cpu), torch.device("cpu"))
    assert memory_check(right).passed
    big = torch.ones(256 * MIB // 4)  # the lifetime peak now well above the RSS to come
    del big
    wrong = allocation_probe(PeakAsRss(cpu), torch.device("cpu"))
    check = memory_check(wrong)
    assert check.passed is False and wrong["relative_error"] > 0.5


def test_make_fit_says_before_a_run_which_side_does_not_fit(free_memory, capsys) -> None:
    from helpers import cli

    free_memory("3GiB")
    assert cli.main(["--fit", "PROFILE=full-shape"]) == 1
    out = capsys.readouterr().out
    assert out.count("short by") == 4  # target, reference, golden, baseline (bfloat16 target)
    assert "golden cpu float64:" in out and "accuracy_parity.golden=off" in out
    free_memory("20GiB")
    assert cli.main(["--fit", "PROFILE=tiny"]) == 0


@pytest.mark.slow
def test_a_run_under_a_memory_limit_shows_the_refused_stage_and_runs_the_others(
        tmp_path, free_memory) -> None:
    from helpers.records import read_result
    from helpers.runner.pipeline import run_pipeline

    free_memory("100MiB")  # the tiny reference needs about 0.13 GiB
    cfg = RunConfig.from_params(out=str(tmp_path), stages=["environment", "accuracy_parity"])
    run = run_pipeline(cfg, figures_dir=None, pdf=False)
    assert run.exit_code == 2  # a stage raised, said so, and the report was still made
    assert run.results["environment"].status == "passed"
    refused = read_result(run.run_dir / "results" / "accuracy_parity.json")
    assert refused.status == "error" and refused.error["type"] == "MemoryBudgetError"
    assert "reference cpu float32 cannot be held" in refused.error["message"]
    assert "free 0.10 GiB (HELPERS_FREE_MEMORY=100MiB" in refused.error["message"]
    assert "cannot be held" in run.html.read_text()
