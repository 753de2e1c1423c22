"""Audio helpers: bad files, resampling, mix-down, log-mel against references, fixtures, players."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import audio, paths, players, plots

SR = 16000


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, sr: int) -> tuple[float, float]:
    """Frequency of the FFT peak and the width of one FFT bin, both in Hz."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * sr / len(x), sr / len(x)


# ---- bad files ---------------------------------------------------------------------------

def _write_missing(p):
    return p / "missing.wav"


def _write_zero_bytes(p):
    (p / "zero.wav").write_bytes(b"")
    return p / "zero.wav"


def _write_garbage(p):
    (p / "garbage.wav").write_bytes(b"this is not audio at all" * 40)
    return p / "garbage.wav"


def _write_no_frames(p):
    sf.write(p / "empty.wav", np.zeros(0, dtype=np.float32), SR, subtype="PCM_16")
    return p / "empty.wav"


def _write_nan(p):
    x = _sine(440, SR, 1.0)
    x[100:200] = np.nan
    sf.write(p / "nan.wav", x, SR, subtype="FLOAT")
    return p / "nan.wav"


def _write_too_short(p):
    sf.write(p / "short.flac", _sine(440, SR, 0.05), SR, subtype="PCM_16")
    return p / "short.flac"


@pytest.mark.parametrize("writer, phrase", [
    (_write_missing, "does not exist"),
    (_write_zero_bytes, "0 bytes"),
    (_write_garbage, "cannot read audio file"),
    (_write_no_frames, "no samples"),
    (_write_nan, "NaN/Inf"),
    (_write_too_short, "shorter than the 0.1 s minimum"),
])
def test_bad_file_is_a_clear_error_naming_the_file(tmp_path, writer, phrase):
    path = writer(tmp_path)
    with pytest.raises(audio.AudioError) as err:
        audio.load_checked(path, sr=SR)
    message = str(err.value)
    assert phrase in message
    assert str(path) in message


def _write_zeros(p):
    sf.write(p / "zeros.wav", np.zeros(SR, dtype=np.float32), SR, subtype="PCM_16")
    return p / "zeros.wav"


def _write_whisper_quiet(p):
    noise = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 10 ** (-70 / 20)
    sf.write(p / "quiet.wav", noise, SR, subtype="PCM_16")
    return p / "quiet.wav"


def _write_clipped(p):
    sf.write(p / "clipped.wav", np.clip(_sine(300, SR, 1.0, amp=2.0), -1, 1), SR,
             subtype="PCM_16")
    return p / "clipped.wav"


@pytest.mark.parametrize("writer, phrase", [
    (_write_zeros, "digital silence"),
    (_write_whisper_quiet, "near-silent: RMS -7"),
    (_write_clipped, "is clipped"),
])
def test_suspect_file_loads_with_a_recorded_warning(tmp_path, writer, phrase):
    clip = audio.load_checked(writer(tmp_path), sr=SR)
    assert len(clip.warnings) == 1 and phrase in clip.warnings[0]
    assert clip.samples.dtype == np.float32 and clip.samples.shape == (SR,)


def test_clean_speech_and_a_single_full_scale_peak_give_no_warning(tmp_path):
    x = audio.load_fixture("en_fox")
    x[1000] = 1.0  # one sample at full scale is not clipping
    sf.write(tmp_path / "ok.wav", x, SR, subtype="PCM_16")
    assert audio.load_checked(tmp_path / "ok.wav").warnings == []


def test_upsampling_is_a_warning(tmp_path):
    sf.write(tmp_path / "8k.wav", _sine(440, 8000, 0.5), 8000, subtype="PCM_16")
    clip = audio.load_checked(tmp_path / "8k.wav", sr=SR)
    assert clip.sample_rate == SR and clip.source_rate == 8000
    assert any("upsampled from 8000 Hz" in w for w in clip.warnings)


# ---- resampling and mix-down -------------------------------------------------------------

@pytest.mark.parametrize("sr_in", [48000, 44100, 24000])
def test_resampled_sine_keeps_its_frequency_and_duration(sr_in):
    x = _sine(1000.0, sr_in, 1.0)
    y = audio.resample(x, sr_in, SR)
    assert y.dtype == np.float32
    assert abs(len(y) - len(x) * SR / sr_in) <= 1
    peak, bin_hz = _peak_hz(y, SR)
    assert abs(peak - 1000.0) <= bin_hz
    # amplitude survives too (soxr passband is flat): RMS of a 0.5 sine is 0.354
    assert np.sqrt(np.mean(y[100:-100] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)


def test_resample_keeps_channels_first_layout():
    x = np.stack([_sine(1000.0, 48000, 0.5), _sine(2000.0, 48000, 0.5)])  # [2, T]
    y = audio.resample(x, 48000, SR)
    assert y.shape == (2, 8000)
    assert abs(_peak_hz(y[1], SR)[0] - 2000.0) <= _peak_hz(y[1], SR)[1]


def test_mix_to_mono_averages_channels():
    left, right = _sine(500, SR, 0.5), _sine(700, SR, 0.5, amp=0.25)
    mono = audio.mix_to_mono(np.stack([left, right]))
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-7)
    np.testing.assert_array_equal(audio.mix_to_mono(left), left)  # [T] stays as it is


def test_stereo_fixture_mixes_two_different_channels():
    path = audio.fixture("en_stereo_48k").path
    stereo, sr = audio.load(path)
    mono, _ = audio.load(path, mono=True)
    assert sr == 48000 and stereo.shape[0] == 2 and stereo.dtype == np.float32
    assert not np.allclose(stereo[0], stereo[1], atol=1e-3)  # delayed, attenuated copy
    np.testing.assert_allclose(mono, stereo.mean(axis=0), atol=1e-7)


# ---- mel filterbank and log-mel against references ---------------------------------------

@pytest.mark.parametrize("sr, n_fft, n_mels, f_max, scale, norm", [
    (16000, 400, 128, 8000.0, "slaney", "slaney"),   # Whisper large-v3
    (16000, 400, 80, 8000.0, "slaney", "slaney"),    # Whisper up to v2
    (16000, 1024, 128, None, "slaney", "slaney"),    # codec at 16 kHz
    (24000, 1024, 100, 12000.0, "slaney", "slaney"),  # BigVGAN 24 kHz
    (16000, 512, 80, None, "htk", None),
])
def test_mel_filterbank_matches_librosa(sr, n_fft, n_mels, f_max, scale, norm):
    import librosa

    ours = audio.mel_filterbank(sr, n_fft, n_mels, 0.0, f_max, scale, norm)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmax=f_max, htk=scale == "htk",
                              norm=norm, dtype=np.float64)
    assert ours.shape == (n_mels, n_fft // 2 + 1)
    # tolerance: float64 rounding, 1e-12 of the largest weight (measured: bit-identical)
    assert np.abs(ours - ref).max() <= 1e-12 * ref.max()


def test_mel_filterbank_matches_transformers():
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=128, min_frequency=0.0,
                          max_frequency=8000.0, sampling_rate=16000, norm="slaney",
                          mel_scale="slaney").T
    # tolerance: float64 rounding of a different formula order (measured: 1.1e-14 relative)
    assert np.abs(audio.WHISPER.filterbank() - ref).max() <= 1e-12 * ref.max()


@pytest.mark.parametrize("n_mels", [128, 80])
def test_whisper_log_mel_matches_whisper_feature_extractor(n_mels):
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=n_mels)  # built locally, no download
    for name in ("en_fox", "zh_station"):
        x = audio.load_fixture(name)
        ref = extractor(x, sampling_rate=SR, return_tensors="np").input_features[0]
        ours = audio.log_mel(audio.pad_or_trim(x, audio.WHISPER_CHUNK_S * SR),
                             audio.whisper_spec(n_mels)).numpy()
        assert ours.shape == ref.shape == (n_mels, 3000)
        # tolerance 1e-5 (the extractor's own stated torch-vs-numpy agreement);
        # both are float32 torch.stft, so measured 1.2e-7 (one float32 ulp)
        assert np.abs(ours - ref).max() <= 1e-5


def test_whisper_log_mel_matches_a_float64_reference():
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    fb = mel_filter_bank(num_frequency_bins=201, num_mel_filters=128, min_frequency=0.0,
                         max_frequency=8000.0, sampling_rate=SR, norm="slaney",
                         mel_scale="slaney")
    for name in ("en_paris", "zh_ai"):
        x = audio.load_fixture(name).astype(np.float64)
        ref = spectrogram(x, window_function(400, "hann"), frame_length=400, hop_length=160,
                          power=2.0, mel_filters=fb, log_mel="log10")[:, :-1]
        ref = (np.maximum(ref, ref.max() - 8.0) + 4.0) / 4.0
        diff = np.abs(audio.log_mel(x).numpy().astype(np.float64) - ref)
        # float32 STFT vs float64: measured max 4.1e-5, mean 3.6e-7 (features span about 2.0)
        assert diff.max() <= 2e-4 and diff.mean() <= 2e-6


def test_codec_log_mel_matches_librosa():
    import librosa

    spec = audio.CODEC
    x = audio.load_fixture("zh_weather").astype(np.float64)
    mag = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=1024, hop_length=320, window="hann",
                                         center=True, pad_mode="reflect", power=1.0,
                                         n_mels=128, htk=False, norm="slaney")
    ref = np.log(np.maximum(mag, 1e-5))
    ours = audio.log_mel(x, spec).numpy().astype(np.float64)
    assert ours.shape == ref.shape == (128, spec.frames(len(x)))
    diff = np.abs(ours - ref)
    # float32 vs float64 in ln units: measured max 9.5e-4 (quiet bins near the 1e-5 clamp),
    # mean 3.4e-6, relative L2 3e-6
    assert diff.max() <= 5e-3 and diff.mean() <= 2e-5
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) <= 1e-5


def test_log_mel_frames_match_the_spec():
    x = audio.load_fixture("en_paris")
    assert audio.log_mel(x).shape == (128, audio.WHISPER.frames(len(x)))
    assert audio.log_mel(x, audio.codec_spec(n_mels=80)).shape[0] == 80


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64, torch.int16])
def test_log_mel_casts_any_input_to_float32_first(dtype):
    x = audio.load_fixture("en_fox")
    ref = audio.log_mel(x)
    t = torch.from_numpy(x)
    t = (t * 32767).round().to(dtype) if dtype == torch.int16 else t.to(dtype)
    out = audio.log_mel(t, device="cpu")
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    # the input's own rounding bounds the difference: bf16 keeps 8 bits of mantissa
    tol = {torch.bfloat16: 0.1, torch.float16: 0.02, torch.float64: 1e-5, torch.int16: 0.01}
    assert (out - ref).abs().mean().item() <= tol[dtype]


def test_batched_log_mel_equals_each_example_with_its_own_range_clamp():
    a, b = audio.load_fixture("en_fox"), audio.load_fixture("zh_ai")
    n = min(len(a), len(b))
    batch = audio.log_mel(np.stack([a[:n], 0.01 * b[:n]]))  # [2, M, N]
    for i, x in enumerate((a[:n], 0.01 * b[:n])):
        torch.testing.assert_close(batch[i], audio.log_mel(x), atol=1e-5, rtol=0)


def test_log_mel_rejects_too_short_and_multichannel_input():
    with pytest.raises(audio.AudioError, match="too few"):
        audio.log_mel(np.zeros(100, dtype=np.float32))
    with pytest.raises(audio.AudioError, match="mix_to_mono"):
        audio.log_mel(np.zeros((1, 2, SR), dtype=np.float32))


# ---- fixtures ----------------------------------------------------------------------------

def test_fixtures_cover_both_languages_and_a_48k_stereo_file():
    fx = audio.fixtures()
    mono16 = [f for f in fx if (f.sample_rate, f.channels, f.subtype) == (SR, 1, "PCM_16")]
    assert sum(f.language == "en" for f in mono16) >= 3
    assert sum(f.language == "zh" for f in mono16) >= 3
    assert any((f.sample_rate, f.channels, f.subtype) == (48000, 2, "PCM_24") for f in fx)
    assert all(f.text and 1.5 <= f.duration_s <= 4.0 for f in fx)
    folder = sum(p.stat().st_size for p in audio.FIXTURES_DIR.iterdir())
    assert folder < 1_000_000


def test_fixture_files_match_their_metadata():
    for f in audio.fixtures():
        info = sf.info(f.path)
        assert (info.samplerate, info.channels, info.subtype, info.format, info.frames) == (
            f.sample_rate, f.channels, f.subtype, f.format, f.frames), f.name
        assert info.duration == pytest.approx(f.duration_s, abs=1e-3)
        assert audio.load_checked(f.path).warnings == [], f.name


@pytest.mark.parametrize("sr", [16000, 24000])
def test_load_fixture_returns_mono_float32_at_the_requested_rate(sr):
    for f in audio.fixtures():
        x = audio.load_fixture(f.name, sr=sr)
        assert x.dtype == np.float32 and x.ndim == 1
        assert abs(len(x) - f.frames * sr / f.sample_rate) <= 1


def test_unknown_fixture_lists_the_shipped_ones():
    with pytest.raises(audio.AudioError, match="en_fox"):
        audio.fixture("nope")
    assert list(audio.fixtures_table().index) == [f.name for f in audio.fixtures()]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_make_data_regenerates_the_shipped_fixtures(tmp_path):
    script = paths.ROOT / "scripts" / "make_audio_fixtures.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    shipped = json.loads((audio.FIXTURES_DIR / "fixtures.json").read_text(encoding="utf-8"))
    fresh = json.loads((tmp_path / "fixtures.json").read_text(encoding="utf-8"))
    assert fresh["fixtures"] == shipped["fixtures"]
    for f in audio.fixtures():
        np.testing.assert_array_equal(sf.read(tmp_path / f.file)[0], sf.read(f.path)[0])


# ---- figures and players -----------------------------------------------------------------

def test_player_embeds_the_wav_and_a_print_figure_without_links():
    x = audio.load_fixture("en_paris")
    page = players.player_html(x, SR, "en_paris <input>")
    assert "data:audio/wav;base64," in page and "http" not in page
    assert '<div class="screen-only"><audio controls' in page
    assert '<div class="print-only"><img' in page and "data:image/png;base64," in page
    assert "en_paris &lt;input&gt;" in page and "<input>" not in page
    wav = base64.b64decode(re.search(r"data:audio/wav;base64,([A-Za-z0-9+/=]+)", page)[1])
    back, sr = sf.read(io.BytesIO(wav), dtype="float32")
    assert sr == SR and back.shape == x.shape and np.abs(back - x).max() <= 1 / 32768
    png = base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_player_says_when_what_you_hear_was_scaled():
    loud = _sine(440, SR, 0.5, amp=3.0)
    assert "clipped to full scale" in players.player_html(loud, SR, "loud")
    assert "peak-normalized" in players.player_html(loud, SR, "loud", normalize=True)
    html = players.player(loud, SR, "loud", normalize=True)._repr_html_()
    assert "data:audio/wav;base64," in html


def _savefig_tight(fig, dpi):
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return Image.open(buf).convert("RGB")


def _apart(a, b) -> float:
    """Mean absolute difference (of 255) of two renders seen at a quarter of their size, the
    crops aligned to the pixel (they may start a pixel apart)."""
    from PIL import Image

    w, h = min(a.width, b.width) - 1, min(a.height, b.height) - 1
    seen = [np.asarray(x.resize((w // 4, h // 4), Image.Resampling.BOX), dtype=float)
            for x in [b.crop((0, 0, w, h))] + [a.crop((dx, dy, dx + w, dy + h))
                                               for dx in (0, 1) for dy in (0, 1)]]
    return min(float(np.abs(x - seen[0]).mean()) for x in seen[1:])


@pytest.mark.parametrize("title", ["short", "a title far wider than the figure " * 6])
def test_one_draw_gives_what_savefig_tight_writes(title):
    """plots.drawn crops one render where savefig draws twice: the same picture (at a
    sub-pixel offset), and a title past the canvas grows it exactly as savefig does."""
    import matplotlib.pyplot as plt

    x = audio.load_fixture("en_paris")
    want = _savefig_tight(players.waveform_mel_figure(x, SR, title)[0], 96)
    fig = players.waveform_mel_figure(x, SR, title)[0]
    engine = fig.get_layout_engine()
    got = plots.drawn(fig, 96).convert("RGB")
    assert fig.dpi == 100 and fig.get_layout_engine() is engine  # left as they were
    assert abs(got.width - want.width) <= 1 and abs(got.height - want.height) <= 1
    assert _apart(got, want) < 5
    other = plots.drawn(players.waveform_mel_figure(audio.load_fixture("en_fox"), SR, title)[0],
                        96).convert("RGB")
    assert _apart(other, want) > 10  # another clip is told apart
    if len(title) > 100:  # a title past the canvas: drawn by savefig itself
        assert got.size == want.size and np.array_equal(np.asarray(got), np.asarray(want))
    plt.close("all")


def test_a_clip_heard_twice_is_drawn_once(tmp_path, monkeypatch):
    """Player figures come from the figure cache when the samples, rate, language and drawing
    code are equal (a clip heard by two tasks, an output equal to the last run's)."""
    monkeypatch.setenv(players.FIGURE_CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(players, "KEPT_PNGS", 2)
    drawn = []
    draw = players.png_base64
    monkeypatch.setattr(players, "png_base64", lambda fig: drawn.append(fig) or draw(fig))
    x = audio.load_fixture("en_paris")
    first = players.player_html(x, SR, "input en_paris")
    again = players.player_html(x.copy(), SR, "reference voice en_paris")
    assert len(drawn) == 1 and len(list(tmp_path.glob("*.png"))) == 1
    png = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")
    assert png.search(first)[1] == png.search(again)[1]
    assert "reference voice en_paris" in again and "input en_paris" not in again
    players.player_html(x[: SR // 2], SR, "a cut")  # other samples: drawn
    players.player_html(x, 8_000, "another rate")  # another rate: drawn
    assert len(drawn) == 3
    assert len(list(tmp_path.glob("*.png"))) == 2  # the newest KEPT_PNGS kept


def test_a_cached_png_is_keyed_by_its_arrays_and_its_drawing_code(tmp_path, monkeypatch):
    """cached_png (the stage 4 fixture figures): equal description and arrays read the cache;
    another array value, another dtype or another drawing file draws again."""
    monkeypatch.setenv(players.FIGURE_CACHE_ENV, str(tmp_path))
    drawn = []

    def draw() -> bytes:
        drawn.append(1)
        return b"\x89PNG" + bytes([len(drawn)])

    code = tmp_path / "drawing.py"
    code.write_text("# one way to draw\n")
    a = np.arange(6, dtype=np.float32)
    first = players.cached_png(("fixture", "x"), [a], draw, drawn_by=[str(code)])
    assert players.cached_png(("fixture", "x"), [a.copy()], draw, drawn_by=[str(code)]) == first
    players.cached_png(("fixture", "x"), [a + 1], draw, drawn_by=[str(code)])
    players.cached_png(("fixture", "x"), [a.astype(np.float64)], draw, drawn_by=[str(code)])
    code2 = tmp_path / "drawing2.py"
    code2.write_text("# another way to draw\n")
    players.cached_png(("fixture", "x"), [a], draw, drawn_by=[str(code2)])
    assert len(drawn) == 4


def test_waveform_mel_figure_has_waveform_and_mel_panels():
    import matplotlib.pyplot as plt

    stereo, sr = audio.load(audio.fixture("en_stereo_48k").path)
    fig, (ax_wave, ax_mel) = players.waveform_mel_figure(stereo, sr, "stereo")
    assert ax_wave.get_title() == "stereo" and len(ax_mel.images) == 1
    assert ax_mel.images[0].get_array().shape[0] == 128
    assert ax_wave.get_xlim()[1] == pytest.approx(stereo.shape[1] / sr, rel=0.1)
    plt.close(fig)
