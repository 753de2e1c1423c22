"""gpa's audio components in the GPA release's own folder formats: the tiny release-layout
folders load through the same strict loaders as real weights, each bad folder fails naming the
file, token rates per second of audio, the mel front ends as upstream computes them, the LM's
token layout."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import audio, models
from helpers.errors import ModelLoadError, ReportError
from helpers.models import audio_components as ac
from helpers.models import bicodec, glm_tokenizer, gpa, weights

CPU = torch.device("cpu")
SR = 16_000


def _load(name: str, folder: Path) -> torch.nn.Module:
    """What the gpa recipe does for a MODEL_DIR folder: its config, then the strict read."""
    with weights.quiet():
        cfg = ac._CLASSES[name][0].from_pretrained(folder)
        return weights.read(ac.loader(name), folder, f"gpa {name}", cfg, torch.float32, None)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight folders laid out as the release's glm-4-voice-tokenizer/ and BiCodec/."""
    root = tmp_path_factory.mktemp("release")
    out = {}
    for name in ac.RELEASE_FORMAT:
        with weights.quiet():
            skel = weights.skeleton(ac.loader(name), ac.config(name, "tiny"), torch.float32)
            module = weights.materialize(skel, {"": "cpu"}, 3)
            folder = root / ac.part(name).subfolder
            module.save_pretrained(folder)
        out[name] = folder
    return out


@pytest.fixture
def copy_of(release, tmp_path: Path):
    def make(name: str) -> Path:
        dst = tmp_path / ac.part(name).subfolder
        shutil.copytree(release[name], dst)
        return dst
    return make


# ---- the release layout --------------------------------------------------------------------


def test_tiny_folders_have_the_release_layout(release) -> None:
    glm = release["speech_tokenizer"]
    assert sorted(p.name for p in glm.iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]
    cfg = json.loads((glm / "config.json").read_text())
    assert cfg["architectures"] == ["WhisperVQEncoder"] and cfg["model_type"] == "whisper"
    names = load_file(str(glm / "model.safetensors")).keys()
    assert {"conv1.weight", "codebook.weight", "embed_positions2.weight", "ema_count",
            "ema_weight", "layers.0.self_attn.k_proj.weight"} <= set(names)
    assert "layers.0.self_attn.k_proj.bias" not in names  # Whisper's k_proj has no bias
    bic = release["codec"]
    assert sorted(p.name for p in bic.iterdir()) == [
        "config.yaml", "model.safetensors", "wav2vec2-large-xlsr-53"]
    assert (bic / "wav2vec2-large-xlsr-53" / "preprocessor_config.json").is_file()
    keys = set(load_file(str(bic / "model.safetensors")).keys())
    assert {"encoder.encoder.embed.weight", "quantizer.codebook.weight",
            "quantizer.cluster_size", "speaker_encoder.quantizer.project_in.weight",
            "speaker_encoder.perceiver_sampler.latents", "prenet.vocos_backbone.norm.scale.weight",
            "postnet.linear.weight", "decoder.model.1.block.1.weight_g",
            "decoder.model.1.block.1.weight_v"} <= keys


@pytest.mark.parametrize("name", ac.RELEASE_FORMAT)
def test_tiny_folders_read_back_equal(release, name) -> None:
    back = _load(name, release[name])
    with weights.quiet():
        skel = weights.skeleton(ac.loader(name), ac.config(name, "tiny"), torch.float32)
        fresh = weights.materialize(skel, {"": "cpu"}, 3)
    inputs = ac.example_inputs(name, back)
    a, b = ac.run(name, fresh, inputs), ac.run(name, back, inputs)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---- bad folders ---------------------------------------------------------------------------


def _error(name: str, folder: Path) -> str:
    with pytest.raises(ModelLoadError) as err:
        _load(name, folder)
    assert isinstance(err.value, ReportError)
    return str(err.value)


def test_missing_config_yaml_is_named(copy_of) -> None:
    folder = copy_of("codec")
    (folder / "config.yaml").unlink()
    msg = _error("codec", folder)
    assert str(folder / "config.yaml") in msg and "is missing" in msg
    assert "config.yaml (section audio_tokenizer)" in msg  # the layout it expected


def test_config_yaml_without_the_section_is_named(copy_of) -> None:
    folder = copy_of("codec")
    (folder / "config.yaml").write_text("sample_rate: 16000\n")
    assert "has no audio_tokenizer section" in _error("codec", folder)


@pytest.mark.parametrize("name", ac.RELEASE_FORMAT)
def test_truncated_safetensors_is_named(copy_of, name) -> None:
    folder = copy_of(name)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    msg = _error(name, folder)
    assert str(path) in msg and "corrupt or truncated" in msg


@pytest.mark.parametrize(("name", "key"), [("speech_tokenizer", "layers.1.fc2.weight"),
                                           ("codec", "speaker_encoder.project.weight")])
def test_a_missing_tensor_is_named(copy_of, name, key) -> None:
    folder = copy_of(name)
    path = folder / "model.safetensors"
    state = load_file(str(path))
    del state[key]
    save_file(state, str(path))
    msg = _error(name, folder)
    assert str(path) in msg and "lacks 1 tensor(s)" in msg and key in msg


def test_an_unknown_or_misshaped_tensor_is_named(copy_of) -> None:
    folder = copy_of("speech_tokenizer")
    path = folder / "model.safetensors"
    state = load_file(str(path))
    state["layers.0.fc1.weight"] = state["layers.0.fc1.weight"][:8].contiguous()
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(path))
    msg = _error("speech_tokenizer", folder)
    assert "does not know (e.g. extra.weight)" in msg
    assert "layers.0.fc1.weight (8, 32) (expected (64, 32))" in msg


def test_a_wav2vec2_folder_of_the_wrong_size_is_named(copy_of) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    folder = copy_of("codec")
    sub = folder / bicodec.WAV2VEC2_DIR
    wrong = Wav2Vec2Config(**dict(bicodec.WAV2VEC2_TINY, hidden_size=48, num_hidden_layers=4))
    with weights.quiet():
        Wav2Vec2Model(wrong).save_pretrained(str(sub))
    msg = _error("codec", folder)
    assert str(sub / "config.json") in msg
    assert "hidden_size 48 (BiCodec's encoder.input_channels is 32)" in msg
    assert "num_hidden_layers 4" in msg


def test_wav2vec2_weights_that_miss_tensors_are_named(copy_of) -> None:
    folder = copy_of("codec")
    path = folder / bicodec.WAV2VEC2_DIR / "model.safetensors"
    state = load_file(str(path))
    key = next(k for k in state if "encoder.layers.3." in k)
    del state[key]
    save_file(state, str(path), metadata={"format": "pt"})
    msg = _error("codec", folder)
    assert "wav2vec2 weights" in msg and str(path.parent) in msg


def test_glm_folder_without_its_feature_extractor_is_named(copy_of) -> None:
    folder = copy_of("speech_tokenizer")
    (folder / "preprocessor_config.json").unlink()
    msg = _error("speech_tokenizer", folder)
    assert str(folder / "preprocessor_config.json") in msg and "is missing" in msg


def test_glm_config_with_settings_not_carried_is_refused(copy_of) -> None:
    folder = copy_of("speech_tokenizer")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["encoder_causal_attention"] = True
    (folder / "config.json").write_text(json.dumps(cfg))
    assert "encoder_causal_attention" in _error("speech_tokenizer", folder)


# ---- token rates ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(release) -> dict[str, torch.nn.Module]:
    return {name: _load(name, folder) for name, folder in release.items()}


def _clip(seconds: float) -> np.ndarray:
    x = audio.load_fixture("zh_station", SR)
    return np.tile(x, 4)[: int(seconds * SR)]


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.3, 7.0])
def test_glm_tokens_are_12_5_per_second(loaded, seconds) -> None:
    m = loaded["speech_tokenizer"]
    out = ac.run("speech_tokenizer", m, ac.inputs_for("speech_tokenizer", _clip(seconds), CPU,
                                                       torch.float32, part_config=m.config))
    assert int(out["lengths"][0]) == math.ceil(seconds * 12.5)
    assert int(out["lengths"][0]) == glm_tokenizer.tokens_for(int(seconds * SR), m.config)


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.3, 7.0])
def test_bicodec_tokens_are_50_per_second_and_32_global(loaded, seconds) -> None:
    m = loaded["codec"]
    n = int(seconds * SR)
    out = ac.run("codec", m, ac.inputs_for("codec", _clip(seconds), CPU, torch.float32,
                                           part_config=m.config))
    semantic = out["semantic_tokens"].shape[1]
    # wav2vec2's conv stack (kernel 400 samples, stride 320): 49 per second, one short of 50
    assert semantic == bicodec.semantic_tokens_for(n, m.config) == (n - 400) // 320 + 1
    assert abs(semantic - seconds * 50) <= 1
    assert out["global_tokens"].shape == (1, 32)  # whatever the length (6-s reference)
    assert out["waveform"].shape[1] == semantic * 320


def test_reference_clip_is_tiled_to_ref_segment_duration() -> None:
    assert ac.config("codec", "full-shape").ref_samples == 96_000  # 6 s (tiny: 2 s)
    cfg = ac.config("codec", "tiny")
    wav, ref = bicodec.prepare(np.linspace(-0.5, 0.5, 8000, dtype=np.float32), cfg)
    assert cfg.ref_samples == 32_000 and ref.shape == (32_000,)
    assert np.array_equal(ref[:8000], wav) and np.array_equal(ref[8000:16000], wav)


# ---- mel front ends, as upstream computes them ---------------------------------------------


@pytest.mark.parametrize("name", ["en_fox", "zh_weather"])
def test_whisper_features_match_the_feature_extractor_as_gpa_calls_it(name) -> None:
    """SpeechTokenExtractor: padding="longest", pad_to_multiple_of=1280, attention mask."""
    from transformers import WhisperFeatureExtractor

    x = audio.load_fixture(name, SR)
    ref = WhisperFeatureExtractor(feature_size=128)(
        [x], sampling_rate=SR, return_attention_mask=True, return_tensors="np",
        padding="longest", pad_to_multiple_of=1280)
    mel, mask = audio.whisper_features(x, 128, pad_to_multiple_of=1280)
    assert mel.shape == ref.input_features[0].shape and mel.shape[-1] % 8 == 0
    assert np.array_equal(mask.numpy(), ref.attention_mask[0])
    assert np.abs(mel.numpy() - ref.input_features[0]).max() <= 1e-5  # float32 both


def test_bicodec_mel_matches_a_float64_computation() -> None:
    """torchaudio MelSpectrogram(16 kHz, n_fft 1024, win 640, hop 320, fmin 10, power 1,
    slaney) as BiCodec builds it, against librosa's float64 of the same formula."""
    import librosa

    spec = audio.BICODEC_MEL
    x = audio.load_fixture("en_paris", SR).astype(np.float64)
    ref = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=1024, hop_length=320, win_length=640,
                                         window="hann", center=True, pad_mode="reflect",
                                         power=1.0, n_mels=128, fmin=10.0, htk=False,
                                         norm="slaney")
    ours = audio.log_mel(x, spec).numpy().astype(np.float64)
    assert ours.shape == ref.shape == (128, len(x) // 320 + 1)
    # float32 STFT vs float64 on a linear magnitude: relative L2 measured 1e-7 order
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) <= 1e-5
    assert np.abs(ours - ref).max() <= 1e-4 * ref.max()


# ---- the LM's token layout and the full-shape sizes ---------------------------------------


def test_token_layout_ranges_are_adjacent_and_inside_the_vocab() -> None:
    t = gpa.TOKEN_LAYOUT
    assert t["glm"]["offset"] + t["glm"]["size"] == t["global"]["offset"] == 168_111
    assert t["global"]["offset"] + t["global"]["size"] == t["semantic"]["offset"] == 172_207
    assert t["semantic"]["offset"] + t["semantic"]["size"] <= gpa.FULL["vocab_size"]
    assert t["glm"]["size"] == ac.config("speech_tokenizer", "full-shape").quantize_vocab_size
    assert t["semantic"]["size"] == ac.config("codec", "full-shape").section[
        "quantizer"]["codebook_size"]
    assert int(gpa.lm_ids("semantic", torch.tensor([0]))[0]) == 172_207
    assert t["eos"] == "<|im_end|>" and t["content"]["start"] == "<|start_content|>"


def test_full_shape_sizes_next_to_the_lm() -> None:
    rows = {r["component"]: r for r in models.get("gpa").describe("full-shape")}
    assert rows["lm"]["parameters_h"] == "312.6M"
    assert rows["speech_tokenizer"]["parameters_h"] == "343.6M"
    assert rows["codec"]["parameters_h"] == "471.8M"


def test_a_model_dir_with_a_bad_audio_folder_fails_naming_the_file(tmp_path: Path,
                                                                    model_cache: Path) -> None:
    """Through the recipe, as MODEL_DIR is read: a present but broken folder is an error."""
    from helpers.config import RunConfig
    from helpers.models import cache

    root = tmp_path / "gpa"
    shutil.copytree(cache.ensure(models.get("gpa"), 0)[0], root)
    (root / "BiCodec" / "config.yaml").unlink()
    cfg = RunConfig.from_params(model="gpa", model_dir=str(root), device="cpu", dtype="float32")
    with pytest.raises(ModelLoadError, match="BiCodec/config.yaml is missing"):
        models.get("gpa").load(CPU, torch.float32, **cfg.recipe_args())
