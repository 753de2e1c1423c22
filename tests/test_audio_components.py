"""The recipes' audio components: tiny build/run/shapes, weight norm, save/load, full-shape
counts on the meta device, the join into the gpa and covo-audio-chat recipes, model folders."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

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
    """GLM-4-Voice's rate as GPA feeds it: padded to 1280 samples (80 ms), one token each."""
    m = tiny["speech_tokenizer"]
    inputs = ac.inputs_for("speech_tokenizer", clip16, CPU, torch.float32)
    padded = math.ceil(clip16.shape[0] / 1280) * 1280
    assert inputs["input_features"].shape == (1, 128, padded // 160)
    out = ac.run("speech_tokenizer", m, inputs)
    assert out["tokens"].shape == (1, padded // 1280)
    assert out["tokens"].dtype == torch.long
    assert 0 <= int(out["tokens"].min()) and int(out["tokens"].max()) < 16_384
    assert int(out["lengths"][0]) == math.ceil(clip16.shape[0] / 16_000 * 12.5)
    assert out["states"].shape == (1, padded // 1280, m.config.d_model)


def test_speech_tokenizer_picks_the_nearest_code(tiny, clip16) -> None:
    """The ids equal a brute-force nearest-code search in float64 over the pooled states."""
    m = tiny["speech_tokenizer"]
    out = ac.run("speech_tokenizer", m, ac.inputs_for("speech_tokenizer", clip16, CPU,
                                                       torch.float32))
    states = out["states"][0].double()  # [N, D]
    book = m.codebook.weight.detach().double()  # [K, D]
    dist = states.pow(2).sum(-1, keepdim=True) - 2 * states @ book.T + book.pow(2).sum(-1)  # [N, K]
    top2 = dist.topk(2, largest=False).values  # ties within float32 noise may differ
    clear = (top2[:, 1] - top2[:, 0]) > 1e-5 * top2[:, 0]
    assert clear.sum() > 30
    assert torch.equal(out["tokens"][0][clear], dist.argmin(-1)[clear])


def test_codec_codes_at_50_hz_and_waveform_at_16_khz(tiny, clip16) -> None:
    m = tiny["codec"]
    assert m.config.section["decoder"]["rates"] == [8, 5, 4, 2]
    out = ac.run("codec", m, ac.inputs_for("codec", clip16, CPU, torch.float32))
    n = out["semantic_tokens"].shape[1]
    assert abs(n - clip16.shape[0] / 320) < 2  # 50 Hz (wav2vec2's conv stack)
    assert out["global_tokens"].shape == (1, 32)
    assert out["codes"].shape == (1, 32 + n)  # global then semantic, as GPA's prompts
    assert int(out["semantic_tokens"].max()) < 8192 and int(out["global_tokens"].max()) < 4096
    assert out["waveform"].shape == (1, n * 320)  # x320 back to 16 kHz
    assert torch.isfinite(out["waveform"]).all() and out["waveform"].abs().max() > 0


def test_codec_decodes_the_codes_it_is_given(tiny, clip16) -> None:
    m = tiny["codec"]
    inputs = ac.inputs_for("codec", clip16, CPU, torch.float32)
    own = ac.run("codec", m, inputs)
    gen = torch.Generator().manual_seed(1)
    other = torch.cat([torch.randint(0, 4096, (1, 32), generator=gen),
                       torch.randint(0, 8192, own["semantic_tokens"].shape, generator=gen)], -1)
    given = ac.run("codec", m, inputs, codes=other)
    assert torch.equal(given["codes"], own["codes"])  # its own encoding is still reported
    assert not torch.allclose(given["waveform"], own["waveform"])
    again = ac.run("codec", m, inputs, codes=own["codes"])
    assert torch.equal(again["waveform"], own["waveform"])


def test_codec_convolutions_are_weight_normed(tiny) -> None:
    """As the release stores them (torch weight_norm's weight_g / weight_v), the weight made
    from the pair; random init sets g = ||v||, so the effective weight is v itself."""
    from helpers.models import bicodec

    m = tiny["codec"]
    kinds = (bicodec.WNConv1d, bicodec.WNConvTranspose1d)
    normed = [c for c in m.modules() if isinstance(c, kinds)]
    # wave generator 1 + 4 x (1 + 3 x 2) + 1, the semantic quantizer's two 1x1 projections
    assert len(normed) == 32 and any(isinstance(c, torch.nn.ConvTranspose1d) for c in normed)
    names = m.bicodec.state_dict()
    assert "decoder.model.0.weight_g" in names and "decoder.model.0.weight_v" in names
    assert not any(k.endswith(".weight") and "decoder.model" in k for k in names)
    for conv in normed:
        w = torch._weight_norm(conv.weight_v, conv.weight_g, 0)
        assert torch.allclose(w, conv.weight_v, atol=1e-6) and torch.all(conv.weight_g > 0)


def test_vocoder_24_khz_from_audio_tokens(tiny) -> None:
    m = tiny["vocoder"]
    assert math.prod(m.config.upsample_rates) == 240 and m.config.sample_rate == 24_000
    x24 = audio.load_fixture("zh_weather", 24_000)
    inputs = ac.inputs_for("vocoder", x24, CPU, torch.float32)
    n = round(x24.shape[0] / 24_000 * 25)  # audio tokens at 25 Hz
    assert inputs["audio_tokens"].shape == (1, n) and inputs["audio_tokens"].dtype == torch.long
    out = ac.run("vocoder", m, inputs)
    # 4 latents per token, the prompt's latents cut, 240 samples per latent
    assert out["waveform"].shape == (1, m.output_samples(n))
    assert torch.isfinite(out["waveform"]).all() and out["waveform"].abs().max() > 1e-4


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
    wa = a.bicodec.quantizer.codebook.weight
    assert not torch.equal(wa, b.bicodec.quantizer.codebook.weight)
    assert torch.equal(wa, _tiny("codec", 0).bicodec.quantizer.codebook.weight)


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
    # WhisperVQEncoder: 16 of whisper-large-v3's 32 layers (quantize_encoder_only), convs,
    # positions (1500 + 375) and 16,384 x 1280 codes
    assert counts["speech_tokenizer"] == 343_599_360
    # BiCodec (156,330,380) + its wav2vec2-large-xlsr-53 (315,438,720)
    assert counts["codec"] == 156_330_380 + 315_438_720 == 471_769_100
    # token2wav at the release's token2wav/config.json (DiT 12 x 1024 + flow-VAE decoder)
    assert counts["vocoder"] == 366_561_170


def test_full_shape_dimensions() -> None:
    tok = ac.config("speech_tokenizer", "full-shape")
    assert (tok.num_mel_bins, tok.d_model, tok.encoder_attention_heads, tok.encoder_ffn_dim,
            tok.max_source_positions) == (128, 1280, 20, 5120, 1500)
    assert (tok.pooling_kernel_size, tok.pooling_position, tok.quantize_position,
            tok.quantize_vocab_size) == (4, 16, 16, 16_384)
    assert tok.encoder_causal_convolution and tok.quantize_encoder_only
    codec = ac.config("codec", "full-shape")
    a = codec.section
    assert a["decoder"]["channels"] == 1536 and a["quantizer"]["codebook_size"] == 8192
    assert (a["speaker_encoder"]["token_num"], a["speaker_encoder"]["fsq_levels"]) == (32, [4] * 6)
    assert codec.wav2vec2.hidden_size == 1024 and codec.wav2vec2.num_hidden_layers == 24
    voc = ac.config("vocoder", "full-shape")
    assert (voc.sample_rate, voc.num_layers, voc.hidden_size, voc.num_heads, voc.z_dim,
            voc.upsample_initial_channel, voc.s_steps, voc.cfg_alpha) == (
        24_000, 12, 1024, 16, 64, 1536, 10, 1.0)


# ---- joined into the recipes ----------------------------------------------------------------


@pytest.fixture(scope="module")
def gpa_tiny(model_cache: Path):
    cfg = RunConfig.from_params(model="gpa", device="cpu", dtype="float32")
    return models.get("gpa").load(CPU, torch.float32, **cfg.recipe_args())


def test_gpa_recipe_loads_its_audio_components(gpa_tiny) -> None:
    assert list(gpa_tiny.components) == ["lm", "speech_tokenizer", "codec"]
    assert type(gpa_tiny.components["speech_tokenizer"]).__name__ == "GlmSpeechTokenizer"
    assert type(gpa_tiny.components["codec"]).__name__ == "BiCodecCodec"
    root = Path(gpa_tiny.source)
    assert (root / "glm-4-voice-tokenizer" / "preprocessor_config.json").is_file()
    assert (root / "BiCodec" / "config.yaml").is_file()
    assert (root / "BiCodec" / "wav2vec2-large-xlsr-53" / "config.json").is_file()
    tok = gpa_tiny.example_inputs("speech_tokenizer")
    frames = math.ceil(audio.fixture("en_fox").frames / 1280) * 8
    assert tok["input_features"].shape == (1, 128, frames)
    codec = gpa_tiny.example_inputs("codec", batch=2)
    assert codec["input_values"].shape == (2, audio.fixture("en_fox").frames)
    assert codec["ref_wav"].shape == (2, 32_000)  # tiny ref_segment_duration 2 s (real: 6)
    out = ac.run("codec", gpa_tiny.components["codec"], codec)
    assert out["waveform"].shape[0] == 2


def test_recipes_describe_their_audio_components() -> None:
    gpa = {r["component"]: r for r in models.get("gpa").describe("full-shape")}
    assert gpa["speech_tokenizer"]["parameters"] == 343_599_360
    assert gpa["codec"]["parameters"] == 471_769_100
    assert gpa["codec"]["bytes_bfloat16"] == 2 * 471_769_100
    covo = {r["component"]: r for r in models.get("covo-audio-chat").describe("tiny")}
    assert covo["vocoder"]["class"] == "Token2Wav"


def test_covo_vocoder_example_inputs(model_cache: Path) -> None:
    cfg = RunConfig.from_params(model="covo-audio-chat", device="cpu", dtype="float32")
    loaded = models.get("covo-audio-chat").load(CPU, torch.float32, **cfg.recipe_args())
    inputs = loaded.example_inputs("vocoder")
    voc = loaded.components["vocoder"]
    wave = ac.run("vocoder", voc, inputs)["waveform"]
    assert wave.shape[-1] == voc.output_samples(inputs["audio_tokens"].shape[1])
    assert (Path(loaded.source) / "token2wav" / "model.pt").is_file()


def test_real_dir_without_audio_folders_loads_the_lm(gpa_tiny, tmp_path: Path) -> None:
    """A MODEL_DIR with the LM only: the LM alone, and the notes say what was left out."""
    root = tmp_path / "gpa"
    shutil.copytree(gpa_tiny.source, root)
    shutil.rmtree(root / "BiCodec")
    shutil.rmtree(root / "glm-4-voice-tokenizer")
    cfg = RunConfig.from_params(model="gpa", model_dir=str(root), device="cpu", dtype="float32")
    loaded = models.get("gpa").load(CPU, torch.float32, **cfg.recipe_args())
    assert list(loaded.components) == ["lm"]
    assert any("speech_tokenizer, codec: built-in shapes only" in n for n in loaded.notes)


def test_real_dir_with_release_folders_loads_them(gpa_tiny, tmp_path: Path) -> None:
    root = tmp_path / "gpa"
    shutil.copytree(gpa_tiny.source, root)
    shutil.rmtree(root / "BiCodec")
    cfg = RunConfig.from_params(model="gpa", model_dir=str(root), device="cpu", dtype="float32")
    loaded = models.get("gpa").load(CPU, torch.float32, **cfg.recipe_args())
    assert list(loaded.components) == ["lm", "speech_tokenizer"]
    a = gpa_tiny.components["speech_tokenizer"].codebook.weight
    assert torch.equal(loaded.components["speech_tokenizer"].codebook.weight, a)
