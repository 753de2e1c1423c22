"""scripts/gpu_check.py: refuses without a CUDA device, and runs for real on the CPU (tiny)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from types import ModuleType

import pytest
import torch

from helpers import paths

SCRIPT = paths.ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    """The script as a module, so its refusals run in this process (the dry run below runs it
    as the command it is, exit status included)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_refuses_with_exit_2_and_says_what_to_do_without_cuda(script, tmp_path, capsys):
    assert script.main(["--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--device cpu --profile tiny" in err
    assert not (tmp_path / "x.json").exists()


def test_bad_device_is_refused(script, tmp_path, capsys):
    assert script.main(["--device", "npu", "--out", str(tmp_path / "x.json")]) == 2
    assert "use cuda, cuda:N or cpu" in capsys.readouterr().err


def test_dry_run_on_the_cpu_writes_the_summary(tmp_path):
    dest = tmp_path / "gpu-check.json"
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--profile", "tiny",
                          "--out", str(dest)], capture_output=True, text=True, timeout=300)
    assert out.returncode in (0, 1), out.stderr[-2000:]
    s = json.loads(dest.read_text())
    assert s["device"] == "cpu" and s["model"] == "gpa (tiny)"
    assert s["eager_hf_generate_tokens_per_s"] > 0
    assert s["decode_tokens_per_s_decode_loop_static_cache"] > 0 and s["prefill_s"] > 0
    assert 0 < s["bandwidth_utilization_decode_loop"] == pytest.approx(
        s["achieved_bandwidth_gb_s"] / s["copy_bandwidth_gb_s"])
    par = s["parity"]
    assert par["identical_weights"] is True and par["tensors"] > 0  # same seed, same weights
    assert 0.99 < par["logits_cosine"] <= 1.0 + 1e-12
    assert s["judged"]["identical_weights"] is True
    assert "eager HF generate" in out.stdout and "parity vs cpu float32" in out.stdout
    assert out.returncode == (0 if all(v is not False for v in s["judged"].values()) else 1)
