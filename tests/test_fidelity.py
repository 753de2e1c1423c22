"""Where real files go in, the inputs follow the released pipelines: BiCodec's input level
(Spark-TTS's audio_volume_normalize), Covo's resampler (torchaudio's windowed sinc) against a
float64 evaluation of its formula, GLM input at 16 kHz, tts-a's text for a clip without a
transcript, a GPA LM file with an unknown tensor refused, Covo's placeholder note."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import audio, models, resample
from helpers.errors import ModelLoadError
from helpers.models import audio_components as ac
from helpers.models import bicodec, cache, glm_tokenizer
from helpers.models import covo_frontend as fe
from helpers.models.base import prompts
from helpers.tasks import inputs

CPU = torch.device("cpu")
FIXTURES = [f.name for f in audio.fixtures()]
# float32 against float64: each output is a sum of at most 2 width + orig = 28 taps (48 -> 24
# kHz; 23 for 24 -> 16 kHz) of samples and kernel values under 1, each product and partial sum
# rounded once at float32's unit roundoff 2^-24, plus the kernel's own float32 rounding
ROUNDING = 3 * 28 * 2.0**-24


# ---- BiCodec's input level -----------------------------------------------------------------

def _volume_f64(x: np.ndarray) -> np.ndarray:
    """Spark-TTS sparktts/utils/audio.py audio_volume_normalize, evaluated here on its own:
    the loudness is the mean of the 90th-99th percentile of the input's |x| above 0.01."""
    y = x.astype(np.float64)
    mag = np.abs(y)
    if mag.max() < 0.1:
        y = y * (0.1 / max(mag.max(), 1e-3))
    loud = np.sort(mag[mag > 0.01])
    if loud.size <= 10:
        return y
    lo, hi = int(0.9 * loud.size), int(0.99 * loud.size)
    gain = min(max(0.2 / (loud[lo:hi].sum() / (hi - lo)), 0.1), 10.0)
    y = y * gain
    return y / np.abs(y).max() if np.abs(y).max() > 1 else y


@pytest.mark.parametrize("name", FIXTURES)
def test_bicodec_input_level_is_spark_tts_volume_normalize(name: str) -> None:
    x = audio.load_fixture(name, 16_000)
    want = _volume_f64(x)
    assert np.abs(bicodec.volume_normalize(x) - want).max() <= 1e-12
    wav, ref = bicodec.prepare(x, ac.config("codec", "tiny"))
    assert np.abs(wav - want).max() <= 2.0**-24  # one float32 rounding of values under 1
    n = min(ref.shape[0], wav.shape[0])  # the speaker reference is cut from the same level
    assert np.array_equal(ref[:n], wav[:n])
    # the fixtures peak at -3 dBFS: upstream's level puts them near 0.5, not at 0.9
    assert 0.4 < np.abs(wav).max() < 0.7


def test_bicodec_level_branches_quiet_and_nearly_silent() -> None:
    x = audio.load_fixture("en_fox", 16_000)
    quiet = x * 0.05  # peak under 0.1: raised to 0.1 first, loudness still from the input
    assert np.abs(bicodec.volume_normalize(quiet) - _volume_f64(quiet)).max() <= 1e-12
    few = np.zeros_like(x)
    few[:10] = x[np.argsort(np.abs(x))[-10:]]  # ten samples above 0.01: only the first step
    out = bicodec.volume_normalize(few)
    assert np.allclose(out, few / np.abs(few).max() * 0.1 if np.abs(few).max() < 0.1 else few)
    off = ac.config("codec", "tiny")
    off.yaml["volume_normalize"] = False
    assert np.array_equal(bicodec.prepare(x, off)[0], x)


# ---- Covo's resampler ----------------------------------------------------------------------

def _sinc_f64(x: np.ndarray, orig_hz: int, new_hz: int) -> np.ndarray:
    """torchaudio's formula written directly: y[m] = sum_i x[i] h(i - m orig / new), h the
    hann-windowed sinc of 6 zero crossings at 0.99 of the lower Nyquist; a loop over taps."""
    g = math.gcd(orig_hz, new_hz)
    o, n = orig_hz // g, new_hz // g
    base = min(o, n) * 0.99
    reach = math.ceil(6 * o / base) + 1
    x = np.asarray(x, np.float64)
    centre = np.arange(math.ceil(n * x.shape[0] / o)) * o / n  # input position of each output
    y = np.zeros(centre.shape[0])
    for r in range(-reach, reach + 1):
        i = np.floor(centre).astype(np.int64) + r
        t = (i - centre) * base / o
        ok = (i >= 0) & (i < x.shape[0]) & (np.abs(t) <= 6)
        h = np.sinc(t) * np.cos(np.pi * t / 12) ** 2 * base / o
        y[ok] += x[i[ok]] * h[ok]
    return y


@pytest.mark.parametrize(("kernel_dtype", "what"), [
    (torch.float32, "functional.resample (kernel in the samples' dtype)"),
    (None, "transforms.Resample (kernel built in float64)")])
def test_sinc_resampler_matches_a_float64_evaluation(kernel_dtype, what) -> None:
    x48 = audio.load_checked(audio.fixture("en_stereo_48k").path).samples  # channel mean
    x24 = resample.resample(x48, 48_000, 24_000, kernel_dtype).numpy()
    want24 = _sinc_f64(x48, 48_000, 24_000)
    assert x24.shape == want24.shape == (math.ceil(x48.shape[0] / 2),), what
    assert np.abs(x24 - want24).max() <= ROUNDING, what
    x16 = resample.resample(x24, 24_000, 16_000, kernel_dtype).numpy()
    want16 = _sinc_f64(x24, 24_000, 16_000)
    assert x16.shape == want16.shape == (math.ceil(x24.shape[0] * 2 / 3),)
    assert np.abs(x16 - want16).max() <= ROUNDING, what
    batch = torch.from_numpy(np.stack([x24, -x24]))  # [C, T]: channels resampled alike
    assert torch.equal(resample.resample(batch, 24_000, 16_000, kernel_dtype)[1],
                       -torch.from_numpy(x16))


@pytest.mark.parametrize("name", ["en_fox", "en_stereo_48k"])
def test_covo_front_end_resamples_as_the_release(name: str) -> None:
    """File rate -> 24 kHz (functional.resample), then 24 -> 16 kHz (Resample module), against
    the float64 formula; the log-mel then differs by float32 rounding only (with soxr the
    fixtures' log-mels differed by up to 0.55)."""
    wave, rate = fe.read(audio.fixture(name).path)
    prep = fe.prepare(wave, rate)
    want24 = _sinc_f64(wave, rate, fe.RATE)[: prep.wave24.shape[0]]
    assert np.abs(prep.wave24[: want24.shape[0]] - want24).max() <= ROUNDING
    x16 = fe.to_encoder_rate(prep.segments[0])
    assert np.abs(x16 - _sinc_f64(prep.segments[0], fe.RATE, fe.ENCODER_RATE)).max() <= ROUNDING
    got = fe.features(prep, dtype=torch.float32)[0]
    ref = audio.log_mel(audio.pad_or_trim(_sinc_f64(prep.segments[0], fe.RATE, fe.ENCODER_RATE)
                                          .astype(np.float32), fe.WINDOW), fe.SPEC)
    # float32 STFT of inputs within ROUNDING: measured under 6e-5 on every fixture
    assert float((got - ref).abs().max()) <= 1e-4


def test_sinc_resampler_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="positive"):
        resample.resample(np.zeros(10, np.float32), 0, 16_000)
    with pytest.raises(TypeError, match="floating-point"):
        resample.resample(torch.zeros(10, dtype=torch.int16), 24_000, 16_000)
    x = torch.ones(5)
    assert resample.resample(x, 16_000, 16_000) is x


# ---- the GLM tokenizer's input rate -------------------------------------------------------

def test_a_48khz_file_reaches_the_glm_tokenizer_at_16khz() -> None:
    """GPA's SpeechTokenExtractor feeds a file at its own rate; the tokenizer is a 16 kHz
    model (WhisperFeatureExtractor at 16 kHz, 12.5 tokens/s), so the clip is resampled."""
    clip = inputs.fixtures("en_stereo_48k")[0]
    cfg = ac.config("speech_tokenizer", "tiny")
    seconds = audio.load(clip.path)[0].shape[-1] / 48_000
    assert abs(clip.samples16.shape[0] - seconds * 16_000) <= 1  # not 48,000 a second
    assert abs(glm_tokenizer.tokens_for(clip.samples16.shape[0], cfg) - seconds * 12.5) <= 1


# ---- tts-a without a transcript -------------------------------------------------------------

@pytest.mark.parametrize(("name", "language"), [("en_paris", "en"), ("zh_ai", "zh")])
def test_tts_a_speaks_a_shipped_sentence_without_a_transcript(name: str, language: str) -> None:
    clip = inputs.fixtures(name)[0]
    assert inputs.spoken(clip) is clip  # a transcript is spoken as it is
    bare = replace(clip, text="")
    said = inputs.spoken(bare)
    assert said.text == prompts()[language][0] and said.language == language
    (note,) = inputs.spoken_note([bare, clip])
    assert name in note and said.text in note
    assert inputs.spoken(replace(bare, language="fr")).text == prompts()["en"][0]


def test_tts_a_runs_for_a_clip_without_a_transcript(tmp_path: Path, model_cache: Path) -> None:
    from helpers.config import RunConfig
    from helpers.stages import tasks
    from helpers.stages.kit import target

    shutil.copy(audio.fixture("en_paris").path, tmp_path / "paris.wav")  # no transcript
    cfg = RunConfig.from_params(model="gpa", device="cpu", dtype="float32")
    runs = tasks.run_all(target(cfg), audio_dir=str(tmp_path),
                         s=tasks.settings(cfg, max_new_tokens=4, roundtrip=False))
    frame = tasks.compare(runs)
    assert sorted(frame["task"]) == ["stt", "tts-a", "vc"] and frame["error"].isna().all()
    row = frame[frame["task"] == "tts-a"].iloc[0]
    assert row["reference text"] == prompts()["en"][0]
    assert any("paris (no transcript)" in n for n in runs.settings.notes)


# ---- a GPA LM file with an unknown tensor ---------------------------------------------------

def test_gpa_lm_with_an_unknown_tensor_is_refused(tmp_path: Path, model_cache: Path) -> None:
    from helpers.config import RunConfig

    root = tmp_path / "gpa"
    shutil.copytree(cache.ensure(models.get("gpa"), 0)[0], root)
    file = root / "model.safetensors"
    state = load_file(str(file))
    state["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2, 2)
    save_file(state, str(file), metadata={"format": "pt"})
    cfg = RunConfig.from_params(model="gpa", model_dir=str(root), device="cpu", dtype="float32")
    with pytest.raises(ModelLoadError) as err:
        models.get("gpa").load(CPU, torch.float32, **cfg.recipe_args())
    assert "model.layers.0.mlp.extra_proj.weight" in str(err.value)
    assert str(file) in str(err.value)


# ---- Covo's placeholder --------------------------------------------------------------------

def test_covo_config_placeholder_that_the_tokenizer_contradicts_is_noted() -> None:
    from helpers.models import covo

    tok = covo.tiny_tokenizer()  # the shipped tokenizer plus the release's audio tokens
    config = models.get("covo-audio-chat").configs("tiny")["model"]
    token = tok.convert_tokens_to_ids("<|cAUDIO|>")
    assert config.audio_token_index != token  # as CovoAudioConfig's 151671 against 151666
    (note,) = covo.placeholder_note(config, tok, Path("/release"))
    assert f"audio_token_index is {config.audio_token_index}" in note and str(token) in note
    config.audio_token_index = token
    assert covo.placeholder_note(config, tok, Path("/release")) == []
