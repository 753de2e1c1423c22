"""The recipes' audio components: tiny build/run/shapes, weight norm, save/load, full-shape
counts on the meta device, the join into the gpa and covo-audio-chat recipes, model folders."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from helpers import audio, models
from helpers.config import RunConfig
from helpers.models import audio_components as ac
from helpers.models import weights

CPU = torch.device("cpu")


def _tiny(name: str, seed: int = 0) -> torch.nn.Module:
    with weights.quiet():
        skel = weights.skeleton(ac.loader(name), ac.config(name, "tiny"), torch.float32)
        return weights.materialize(skel, {"": "cpu"}, seed)


@pytest.fixture(scope="module")
def tiny() -> dict[str, torch.nn.Module]:
    return {name: _tiny(name) for name in ac.PARTS}


@pytest.fixture(scope="module")
def clip16() -> np.ndarray:
    return audio.load_fixture("en_fox", 16_000)  # 3.16 s


# ---- tiny: build, run, shapes ---------------------------------------------------------------


def test_speech_tokenizer_tokens_at_12_5_hz(tiny, clip16) -> None:
    m = tiny["speech_tokenizer"]
    inputs = ac.inputs_for("speech_tokenizer", clip16, CPU, torch.float32)
    assert inputs["input_features"].shape == (1, 128, 3000)  # Whisper's 30-s window
    out = ac.run("speech_tokenizer", m, inputs)
    assert out["tokens"].shape == (1, 375)  # 1500 positions / 4 = 12.5 Hz over 30 s
    assert out["tokens"].dtype == torch.long
    assert 0 <= int(out["tokens"].min()) and int(out["tokens"].max()) < 16_384
    # tokens that cover the 3.16-s clip: ceil(3.16 s * 12.5 Hz)
    assert int(out["lengths"][0]) == math.ceil(clip16.shape[0] / 16_000 * 12.5)
    assert out["states"].shape == (1, 375, m.config.d_model)


def test_speech_tokenizer_picks_the_nearest_code(tiny, clip16) -> None:
    """The ids equal a brute-force nearest-code search in float64 over the pooled states."""
    m = tiny["speech_tokenizer"]
    out = ac.run("speech_tokenizer", m, ac.inputs_for("speech_tokenizer", clip16, CPU,
                                                       torch.float32))
    states = out["states"][0].double()  # [N, D]
    book = m.codebook.weight.detach().double()  # [K, D]
    # squared distances |s|^2 - 2 s.c + |c|^2 (float64 leaves no cancellation that matters)
    dist = states.pow(2).sum(-1, keepdim=True) - 2 * states @ book.T + book.pow(2).sum(-1)  # [N, K]
    expect = dist.argmin(-1)
    top2 = dist.topk(2, largest=False).values  # ties within float32 noise may differ
    clear = (top2[:, 1] - top2[:, 0]) > 1e-5 * top2[:, 0]
    assert clear.sum() > 300
    assert torch.equal(out["tokens"][0][clear], expect[clear])
    # pooling is a 4-frame average of the encoder's 50 Hz states
    with torch.no_grad():
        enc = m.encoder(input_features=ac.inputs_for(
            "speech_tokenizer", clip16, CPU, torch.float32)["input_features"]).last_hidden_state
    assert torch.allclose(out["states"][0, 7], enc[0, 28:32].mean(0), atol=1e-6)


def test_codec_codes_at_50_hz_and_waveform_at_16_khz(tiny, clip16) -> None:
    m = tiny["codec"]
    assert m.config.upsampling_ratios == [8, 5, 4, 2] and m.config.hop_length == 320
    out = ac.run("codec", m, ac.inputs_for("codec", clip16, CPU, torch.float32))
    assert out["codes"].shape[:2] == (1, 1)  # one code book
    assert abs(out["codes"].shape[2] - clip16.shape[0] / 320) < 1  # 50 Hz
    assert int(out["codes"].max()) < 8192
    assert out["waveform"].shape[0] == 1
    assert abs(out["waveform"].shape[1] - clip16.shape[0]) < 320  # x320 back to 16 kHz
    assert torch.isfinite(out["waveform"]).all() and out["waveform"].abs().max() > 0


def test_codec_decodes_the_codes_it_is_given(tiny, clip16) -> None:
    m = tiny["codec"]
    inputs = ac.inputs_for("codec", clip16, CPU, torch.float32)
    own = ac.run("codec", m, inputs)
    other = torch.randint(0, 8192, own["codes"].shape, generator=torch.Generator().manual_seed(1))
    given = ac.run("codec", m, inputs, codes=other)
    assert torch.equal(given["codes"], own["codes"])  # its own encoding is still reported
    assert not torch.allclose(given["waveform"], own["waveform"])
    again = ac.run("codec", m, inputs, codes=own["codes"])
    assert torch.equal(again["waveform"], own["waveform"])


def test_codec_convolutions_are_weight_normed(tiny) -> None:
    m = tiny["codec"]
    convs = [mod for mod in m.modules() if isinstance(mod, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
    normed = [c for c in convs if parametrize.is_parametrized(c, "weight")]
    assert len(normed) == 62 and any(isinstance(c, torch.nn.ConvTranspose1d) for c in normed)
    snakes = [mod for mod in m.modules() if type(mod).__name__ == "Snake1d"]
    assert snakes
    # random init sets the gain g = ||v||, so the effective weight is the direction v itself
    for conv in normed:
        p = conv.parametrizations.weight
        assert torch.allclose(conv.weight, p.original1, atol=1e-6)
        assert torch.all(p.original0 > 0)


def test_vocoder_24_khz_from_100_band_mels(tiny) -> None:
    m = tiny["vocoder"]
    assert math.prod(m.config.upsample_rates) == ac.VOCODER_SPEC.hop_length == 256
    x24 = audio.load_fixture("zh_weather", 24_000)
    inputs = ac.inputs_for("vocoder", x24, CPU, torch.float32)
    frames = ac.VOCODER_SPEC.frames(x24.shape[0])
    assert inputs["spectrogram"].shape == (1, frames, 100)
    out = ac.run("vocoder", m, inputs)
    assert out["waveform"].shape == (1, frames * 256)
    assert torch.isfinite(out["waveform"]).all()


@pytest.mark.parametrize("name", list(ac.PARTS))
def test_tiny_forward_on_a_3_s_clip_is_fast(tiny, name) -> None:
    """Tiny components are for CPU runs: the best of three forwards on 3.16 s of audio, on one
    thread, in CPU seconds of that thread (other processes sharing the cores do not count)."""
    m = tiny[name]
    inputs = ac.example_inputs(name, m)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ac.run(name, m, inputs)  # first call: kernel selection
        best = math.inf
        for _ in range(3):
            t0 = time.thread_time()
            ac.run(name, m, inputs)
            best = min(best, time.thread_time() - t0)
    finally:
        torch.set_num_threads(threads)
    assert best < 1.0, f"{name}: {best:.3f} CPU s"


@pytest.mark.parametrize("name", list(ac.PARTS))
def test_save_pretrained_round_trip(tiny, name, tmp_path: Path) -> None:
    m = tiny[name]
    with weights.quiet():
        m.save_pretrained(str(tmp_path))
        back = weights.read(ac.loader(name), tmp_path, name, ac.config(name, "tiny"),
                            torch.float32, None)
    assert ac.saved_in(tmp_path, name)
    inputs = ac.example_inputs(name, m)
    a, b = ac.run(name, m, inputs), ac.run(name, back, inputs)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_seeds_make_different_weights() -> None:
    a, b = _tiny("codec", 0), _tiny("codec", 1)
    wa = a.quantizer.quantizers[0].codebook.weight
    assert not torch.equal(wa, b.quantizer.quantizers[0].codebook.weight)
    assert torch.equal(wa, _tiny("codec", 0).quantizer.quantizers[0].codebook.weight)


def test_unknown_component_and_profile() -> None:
    with pytest.raises(KeyError, match="unknown audio component 'nope'; known: speech_tokenizer"):
        ac.part("nope")
    with pytest.raises(ValueError, match="built-in shapes for tiny, full-shape, not 'real'"):
        ac.config("codec", "real")


# ---- full shape: counts on the meta device --------------------------------------------------


def test_full_shape_counts_on_meta() -> None:
    counts = {}
    for name in ac.PARTS:
        with weights.quiet():
            skel = weights.skeleton(ac.loader(name), ac.config(name, "full-shape"), torch.float32)
        assert all(p.is_meta for p in skel.parameters())
        counts[name] = sum(p.numel() for p in skel.parameters())
    # Whisper-large-v3 encoder (636,968,960, the covo recipe's audio_encoder) + 16,384 x 1280 codes
    assert counts["speech_tokenizer"] == 636_968_960 + 16_384 * 1280 == 657_940_480
    assert counts["codec"] == 73_940_210
    # BigVGAN-v2 24 kHz 100-band 256x: 112M published; HiFi-GAN's leaky ReLU has no parameters
    assert abs(counts["vocoder"] - 112e6) <= 0.5e6


def test_full_shape_dimensions() -> None:
    tok = ac.config("speech_tokenizer", "full-shape")
    assert (tok.num_mel_bins, tok.d_model, tok.encoder_layers, tok.encoder_attention_heads,
            tok.encoder_ffn_dim, tok.max_source_positions) == (128, 1280, 32, 20, 5120, 1500)
    assert (tok.pooling_kernel_size, tok.codebook_size) == (4, 16_384)
    codec = ac.config("codec", "full-shape")
    assert codec.hidden_size == 1024 and codec.decoder_hidden_size == 1536
    assert (codec.n_codebooks, codec.codebook_size, codec.sampling_rate) == (1, 8192, 16_000)
    assert codec.frame_rate == 50
    voc = ac.config("vocoder", "full-shape")
    assert (voc.sampling_rate, voc.model_in_dim, voc.upsample_initial_channel) == (24_000, 100, 1536)


# ---- joined into the recipes ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gpa_tiny(model_cache: Path):
    cfg = RunConfig.from_params(model="gpa", device="cpu", dtype="float32")
    return models.get("gpa").load(cfg, CPU, torch.float32)


def test_gpa_recipe_loads_its_audio_components(gpa_tiny) -> None:
    assert list(gpa_tiny.components) == ["lm", "speech_tokenizer", "codec"]
    assert type(gpa_tiny.components["speech_tokenizer"]).__name__ == "SpeechTokenizer"
    assert type(gpa_tiny.components["codec"]).__name__ == "Codec"
    root = Path(gpa_tiny.source)
    assert ac.saved_in(root / "glm-4-voice-tokenizer", "speech_tokenizer")
    assert ac.saved_in(root / "BiCodec", "codec")
    tok = gpa_tiny.example_inputs("speech_tokenizer")
    assert tok["input_features"].shape == (1, 128, 3000)
    codec = gpa_tiny.example_inputs("codec", batch=2)
    assert codec["input_values"].shape == (2, 1, audio.fixture("en_fox").frames)
    out = ac.run("codec", gpa_tiny.components["codec"], codec)
    assert out["waveform"].shape[0] == 2


def test_recipes_describe_their_audio_components() -> None:
    gpa = {r["component"]: r for r in models.get("gpa").describe("full-shape")}
    assert gpa["speech_tokenizer"]["parameters"] == 657_940_480
    assert gpa["codec"]["parameters"] == 73_940_210
    assert gpa["codec"]["bytes_bfloat16"] == 2 * 73_940_210
    covo = {r["component"]: r for r in models.get("covo-audio-chat").describe("tiny")}
    assert covo["vocoder"]["class"] == "SpeechT5HifiGan"


def test_covo_vocoder_example_inputs(model_cache: Path) -> None:
    cfg = RunConfig.from_params(model="covo-audio-chat", device="cpu", dtype="float32")
    loaded = models.get("covo-audio-chat").load(cfg, CPU, torch.float32)
    inputs = loaded.example_inputs("vocoder")
    assert inputs["spectrogram"].shape[-1] == 100
    wave = ac.run("vocoder", loaded.components["vocoder"], inputs)["waveform"]
    assert wave.shape[-1] == inputs["spectrogram"].shape[1] * 256


def test_real_dir_without_audio_saves_loads_the_lm(gpa_tiny, tmp_path: Path) -> None:
    """A release folder whose audio sub-models are in their own formats: the LM alone, noted."""
    root = tmp_path / "gpa"
    shutil.copytree(gpa_tiny.source, root)
    shutil.rmtree(root / "BiCodec")
    (root / "BiCodec").mkdir()
    (root / "BiCodec" / "config.yaml").write_text("sample_rate: 16000\n")
    foreign = json.loads((root / "glm-4-voice-tokenizer" / "config.json").read_text())
    foreign["model_type"] = "whisper"  # glm-4-voice-tokenizer's own WhisperVQ config
    (root / "glm-4-voice-tokenizer" / "config.json").write_text(json.dumps(foreign))
    cfg = RunConfig.from_params(model="gpa", model_dir=str(root), device="cpu", dtype="float32")
    loaded = models.get("gpa").load(cfg, CPU, torch.float32)
    assert list(loaded.components) == ["lm"]
    assert any("speech_tokenizer, codec: built-in shapes only" in n for n in loaded.notes)


def test_real_dir_with_audio_saves_loads_them(gpa_tiny, tmp_path: Path) -> None:
    root = tmp_path / "gpa"
    shutil.copytree(gpa_tiny.source, root)
    shutil.rmtree(root / "BiCodec")
    cfg = RunConfig.from_params(model="gpa", model_dir=str(root), device="cpu", dtype="float32")
    loaded = models.get("gpa").load(cfg, CPU, torch.float32)
    assert list(loaded.components) == ["lm", "speech_tokenizer"]
    a = gpa_tiny.components["speech_tokenizer"].codebook.weight
    assert torch.equal(loaded.components["speech_tokenizer"].codebook.weight, a)
