"""The audio components on every fixture (accuracy parity stage): the SNR and mel metrics,
failures as rows, and the covo vocoder path (the notebook end to end is test_accuracy's)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import audio, parity
from helpers.config import RunConfig
from helpers.stages import accuracy_parity as accuracy
from helpers.stages.accuracy_parity import sides
from helpers.stages.kit import target

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


# ---- every component x fixture on the sides run_all loads -------------------------------------


def _runs(model: str, fixtures: str, **params) -> accuracy.Runs:
    cfg = RunConfig.from_params(model=model, device="cpu", **params)
    return accuracy.run_all(cfg, accuracy.plan(target(cfg), golden="off", new_tokens=0,
                                               languages="en", fixtures=fixtures))


@pytest.fixture(scope="module")
def gpa_f32(model_cache: Path) -> accuracy.Runs:
    """Float32 on both sides of the CPU: every output bit-identical."""
    return _runs("gpa", "en_paris,zh_station", dtype="float32")


def test_same_configuration_is_identical_on_every_fixture(gpa_f32) -> None:
    sec = accuracy.components_section(gpa_f32)
    assert all(c.passed for c in sec.checks), [c for c in sec.checks if not c.passed]
    rows = sec.table.set_index(["component", "input"])
    assert set(rows.index) == {(c, f) for c in ("speech_tokenizer", "codec")
                               for f in ("en_paris", "zh_station")}
    assert (rows["agreement_pct"] == 100.0).all()
    codec = rows.loc["codec"]
    assert (codec["snr_db"] == math.inf).all() and (codec["mel_distance_db"] == 0.0).all()
    s = sec.metrics["components"]["codec"]
    assert s["inputs_ok"] == 2 and s["dtype"] == "float32" == s["upstream_dtype"]
    # the players: the tokenizer's first ids, the codec's two waveforms
    clip = accuracy.pick(gpa_f32, "zh_station")[0]
    assert "nowhere" in accuracy.shown(sec, gpa_f32, clip, "speech_tokenizer").to_html()
    assert accuracy.shown(sec, gpa_f32, clip, "codec").data.count("<audio") == 2


def test_failures_are_rows(gpa_f32, tmp_path: Path) -> None:
    bad = tmp_path / "empty.wav"
    bad.write_bytes(b"")
    fx = audio.Fixture("empty", str(bad), "en", "", "", 16000, 1, "PCM_16", "WAV", 0, 0.0)
    clip = sides.load_clips([fx], torch.device("cpu"))[0]
    assert not clip.ok and "0 bytes" in clip.error
    runs = copy.copy(gpa_f32)
    runs.clips = [*gpa_f32.clips, clip]
    runs.target = copy.deepcopy(gpa_f32.target)
    del runs.target.components["codec"]["en_paris"]
    runs.target.errors["codec on en_paris"] = "KeyError: 'codec'"
    sec = accuracy.components_section(runs)
    checks = {c.name: c.passed for c in sec.checks}
    assert checks["all fixtures load without errors"] is False
    assert checks["codec: runs on every loaded fixture on both sides"] is False
    assert checks["speech_tokenizer: runs on every loaded fixture on both sides"] is True
    table = accuracy.parity_table(sec, "codec").set_index("input")
    assert "KeyError" in table.loc["en_paris", "error"]
    assert accuracy.fixtures_table(runs).set_index("fixture").loc["empty", "loaded"] == False  # noqa: E712


def test_a_component_that_raises_on_a_clip_is_recorded(gpa_f32) -> None:
    run = sides.SideRun(gpa_f32.plan.target)
    clip = gpa_f32.clips[0]

    class Broken:
        components = {"codec": torch.nn.Linear(1, 1)}

        def input_device(self, name: str) -> torch.device:
            return torch.device("cpu")

    sides._run_clips(run, Broken(), "codec", [clip], None)
    assert run.components["codec"] == {} and f"codec on {clip.name}" in run.errors


def test_covo_vocoder_on_every_fixture(model_cache: Path) -> None:
    runs = _runs("covo-audio-chat", "zh_ai", dtype="float32")
    sec = accuracy.components_section(runs)
    assert all(c.passed for c in sec.checks)
    row = sec.data["rows"][("vocoder", "zh_ai")]
    # the same CPU in float32 on both sides: bit-identical
    assert row["snr_db"] == math.inf and row["cosine"] == 1.0 and row["mel_distance_db"] == 0.0
    # token2wav decodes as many audio tokens as the clip holds at 25 Hz
    tokens = round(audio.load_fixture("zh_ai", 24_000).shape[0] / 24_000 * 25)
    assert row["_waves"][0].shape[0] == (4 * tokens - 3) * 240  # x4 upsampled, hop 240
    # the encoder and the adapter: once, on the recipe's inputs, by the whole-network rule
    assert {"audio_encoder", "adapter"} <= set(sec.table["component"])


def test_component_dtype_follows_upstream_or_the_run() -> None:
    """component_dtype=upstream: each gpa component as upstream runs it on this device type
    (on a CPU: float32 for both); a bad value names the choices."""
    from helpers.models import audio_components as ac

    tgt = target(RunConfig.from_params(model="gpa", device="cpu", dtype="bfloat16"))
    p = accuracy.plan(tgt, component_dtype="upstream")
    assert p.component_dtypes(["speech_tokenizer", "codec", "lm"]) == {
        "speech_tokenizer": torch.float32, "codec": torch.float32, "lm": torch.bfloat16}
    assert accuracy.plan(tgt).component_dtypes(["codec"]) == {"codec": torch.bfloat16}
    assert ac.upstream_dtype("codec", "cuda") == "float16"
    with pytest.raises(ValueError, match="use one of run, upstream"):
        accuracy.plan(tgt, component_dtype="half")
    with pytest.raises(ValueError, match="unknown"):
        accuracy.plan(tgt, fixtures="en_fox,nope")
