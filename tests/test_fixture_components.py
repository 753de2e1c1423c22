"""The audio components on every fixture (accuracy parity stage): the SNR and mel metrics,
failures as rows, and the covo vocoder path (the notebook end to end is test_accuracy's)."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import audio, models, parity
from helpers.config import RunConfig
from helpers.models import cache
from helpers.stages.accuracy_parity import components as audio_stage
from helpers.stages.kit import target


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model-cache")
    old = os.environ.get(cache.ENV)
    os.environ[cache.ENV] = str(root)  # the papermill kernel inherits it
    yield root
    if old is None:
        os.environ.pop(cache.ENV, None)
    else:
        os.environ[cache.ENV] = old


# ---- metrics -------------------------------------------------------------------------------


def test_snr_db_known_value() -> None:
    ref = np.ones(1000)
    noise = np.where(np.arange(1000) % 2 == 0, 0.1, -0.1)  # power 0.01 of a power-1 signal
    assert parity.snr_db(ref + noise, ref) == pytest.approx(20.0, abs=1e-9)
    assert parity.snr_db(1e200 * (ref + noise), 1e200 * ref) == pytest.approx(20.0, abs=1e-9)
    assert parity.snr_db(torch.tensor(ref + noise, dtype=torch.bfloat16), ref) < 20.1


def test_snr_db_edges() -> None:
    x = np.linspace(-1, 1, 64)
    assert parity.snr_db(x, x) == math.inf
    assert parity.snr_db(x, np.zeros(64)) == -math.inf
    assert math.isnan(parity.snr_db(np.full(64, np.nan), x))
    with pytest.raises(ValueError, match="shapes differ"):
        parity.snr_db(x, x[:10])


def test_snr_matches_cosine_for_orthogonal_error() -> None:
    """snr_for_cosine is exact when the error is orthogonal to the signal."""
    t = np.arange(4000) / 4000
    ref = np.sin(2 * np.pi * 5 * t)
    err = 0.05 * np.cos(2 * np.pi * 5 * t)  # orthogonal over whole periods
    assert np.dot(ref, err) == pytest.approx(0.0, abs=1e-9)
    target = ref + err
    assert parity.snr_for_cosine(parity.cosine(target, ref)) == pytest.approx(
        parity.snr_db(target, ref), abs=1e-6)
    assert parity.snr_for_cosine(0.99) == pytest.approx(16.92, abs=0.01)
    with pytest.raises(ValueError, match="cosine must be in"):
        parity.snr_for_cosine(0.0)


def test_mel_distance() -> None:
    a = np.random.default_rng(0).normal(size=(128, 50))
    assert parity.mel_distance(a + 0.5, a) == pytest.approx(0.5)
    assert parity.mel_distance(a, a) == 0.0
    assert math.isnan(parity.mel_distance(np.full_like(a, np.inf), a))


# ---- failures are rows ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpa_run(model_cache: Path) -> audio_stage.AudioRun:
    return audio_stage.prepare(target(RunConfig.from_params(model="gpa", device="cpu")))


def test_prepare_gives_both_sides_the_same_weights(gpa_run) -> None:
    assert gpa_run.parts == ["speech_tokenizer", "codec"]
    assert gpa_run.dev.dtype == torch.bfloat16 and gpa_run.ref.dtype == torch.float32
    ref = gpa_run.modules["reference"]["codec"].bicodec.quantizer.codebook.weight
    dev = gpa_run.modules["target"]["codec"].bicodec.quantizer.codebook.weight
    assert torch.equal(ref.to(torch.bfloat16), dev)


def test_unreadable_fixture_is_a_row(gpa_run, tmp_path: Path) -> None:
    bad = tmp_path / "empty.wav"
    bad.write_bytes(b"")
    fx = audio.Fixture("empty", str(bad), "en", "", "", 16000, 1, "PCM_16", "WAV", 0, 0.0)
    res = audio_stage.run_fixture(fx, gpa_run)
    assert not res.ok and "0 bytes" in res.error and not res.components
    checks = audio_stage.checks(gpa_run, [res])
    assert checks[0].name == "all fixtures load without errors" and checks[0].passed is False


def test_component_failure_is_a_row(gpa_run) -> None:
    codec = gpa_run.modules["target"].pop("codec")
    try:
        res = audio_stage.run_fixture(audio.fixture("en_paris"), gpa_run)
    finally:
        gpa_run.modules["target"]["codec"] = codec
    assert res.ok and res.components["speech_tokenizer"].ok
    assert not res.components["codec"].ok and "KeyError" in res.components["codec"].error
    table = audio_stage.parity_table([res], "codec")
    assert "KeyError" in table.loc[0, "error"]
    names = {c.name: c for c in audio_stage.checks(gpa_run, [res])}
    assert names["codec: runs on every loaded fixture on both sides"].passed is False


def test_real_profile_reads_saved_components_only(model_cache: Path, tmp_path: Path) -> None:
    """A model dir without the release's BiCodec/ folder: the tokenizer runs, the codec is an
    informational row (a fact about MODEL_DIR, not a failure)."""
    root, _ = cache.ensure(models.get("gpa"), 0)
    dst = tmp_path / "gpa"
    shutil.copytree(root, dst)
    shutil.rmtree(dst / "BiCodec")
    run = audio_stage.prepare(target(RunConfig.from_params(
        model="gpa", model_dir=str(dst), device="cpu", dtype="float32")))
    assert run.parts == ["speech_tokenizer"]
    assert "holds no save of BiCodecCodec" in run.errors["codec"]
    res = audio_stage.run_fixture(audio.fixture("zh_station"), run)
    assert res.components["speech_tokenizer"].metrics["agreement_pct"] == 100.0
    checks = {c.name: c for c in audio_stage.checks(run, [res])}
    assert checks["codec: loaded"].passed is None
    assert checks["speech_tokenizer: tokens agree device vs CPU (%, lowest fixture)"].passed


def test_covo_vocoder_parity(model_cache: Path) -> None:
    run = audio_stage.prepare(target(RunConfig.from_params(
        model="covo-audio-chat", device="cpu", dtype="float32")))
    assert run.parts == ["vocoder"]
    res = audio_stage.run_fixture(audio.fixture("zh_ai"), run)
    m = res.components["vocoder"].metrics
    # the same CPU in float32 on both sides: bit-identical
    assert m["snr_db"] == math.inf and m["cosine"] == 1.0 and m["mel_distance_db"] == 0.0
    wave = res.components["vocoder"].outputs["wave_dev"]
    # token2wav decodes as many audio tokens as the clip holds at 25 Hz
    voc = run.module(run.ref, "vocoder")
    assert wave.shape[0] == voc.output_samples(ac_tokens("zh_ai"))


def test_covo_real_without_token2wav_is_a_row(model_cache: Path, tmp_path: Path) -> None:
    src, _ = cache.ensure(models.get("covo-audio-chat"), 0)
    d = tmp_path / "Covo-Audio-Chat"
    shutil.copytree(src, d)
    shutil.rmtree(d / "token2wav")
    run = audio_stage.prepare(target(RunConfig.from_params(
        model="covo-audio-chat", device="cpu", dtype="float32", model_dir=str(d))))
    assert run.parts == [] and "token2wav" in run.errors["vocoder"]
    assert any("not run: vocoder" in n for n in run.notes)


def ac_tokens(name: str) -> int:
    return round(audio.load_fixture(name, 24_000).shape[0] / 24_000 * 25)


def test_component_dtype_knob_follows_upstream_or_the_run(model_cache: Path) -> None:
    """component_dtype=upstream: each gpa component as upstream runs it on this device type
    (on a CPU: float32 for both), recorded per component; a bad value names the choices."""
    tgt = target(RunConfig.from_params(model="gpa", device="cpu", dtype="bfloat16"))
    run = audio_stage.prepare(tgt, "upstream")
    assert run.dev.dtype == torch.bfloat16
    assert {n: run.dtype_name(run.dev, n) for n in run.parts} == {
        "speech_tokenizer": "float32", "codec": "float32"}
    assert ac_module_dtype(run, "codec") == torch.float32
    res = audio_stage.run_fixture(audio.fixture("en_paris"), run)
    assert res.components["codec"].metrics["snr_db"] == math.inf  # float32 CPU on both sides
    summary = audio_stage.summary([res], run)
    assert summary["codec"]["dtype"] == "float32" == summary["codec"]["upstream_dtype"]
    from helpers.models import audio_components as ac

    assert ac.upstream_dtype("codec", "cuda") == "float16"
    with pytest.raises(ValueError, match="use one of run, upstream"):
        audio_stage.prepare(tgt, "half")


def ac_module_dtype(run: audio_stage.AudioRun, name: str) -> torch.dtype:
    return next(run.modules["target"][name].parameters()).dtype
