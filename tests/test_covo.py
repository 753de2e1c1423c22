"""Covo-Audio-Chat as released: the front end against a float64 computation of its formula,
audio-token counts, the chat prompt, token2wav's release folder, the generation helpers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import audio
from helpers.models import audio_components as ac
from helpers.models import covo_frontend as fe
from helpers.models import token2wav as t2w
from helpers.models import weights
from helpers.models.covo import tiny_tokenizer
from helpers.models.covo_model import split_tokens
from helpers.models.weights import ModelLoadError


def _log_mel_f64(x16: np.ndarray) -> np.ndarray:
    """Whisper's formula in float64: hann STFT (n_fft 400, hop 160, centered, reflect),
    |X|^2 without the last frame, librosa's 128 slaney filters, log10 clamp 1e-10, max - 8,
    (x + 4) / 4."""
    import librosa

    x = np.pad(x16.astype(np.float64), 200, mode="reflect")
    frames = 1 + (x.shape[0] - 400) // 160
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic hann
    idx = np.arange(400)[None, :] + 160 * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * window, axis=1)) ** 2  # [N, 201]
    power = spec[:-1].T  # [201, N - 1]
    filters = librosa.filters.mel(sr=16000, n_fft=400, n_mels=128, dtype=np.float64)
    log = np.log10(np.maximum(filters @ power, 1e-10))
    return (np.maximum(log, log.max() - 8.0) + 4.0) / 4.0


def test_front_end_matches_a_float64_computation() -> None:
    wave48, sr = audio.load(audio.fixture("en_stereo_48k").path)  # [2, T] at 48 kHz
    prep = fe.prepare(wave48, sr)
    assert prep.wave24.shape[0] % 480 == 0 and len(prep.segments) == 1
    got = fe.features(prep, dtype=torch.float32)[0].numpy()  # [128, 3000]
    x16 = audio.pad_or_trim(fe.to_encoder_rate(prep.segments[0]), 480_000)
    want = _log_mel_f64(x16)
    assert got.shape == want.shape == (128, 3000)
    assert np.abs(got - want).max() < 1e-4  # float32 STFT against float64
    assert fe.features(prep).dtype == torch.bfloat16  # as the release feeds the encoder


@pytest.mark.parametrize(("seconds", "tokens", "segments"), [
    (0.05, 1, 1), (1.0, 7, 1), (3.37, 22, 1), (30.0, 188, 1), (45.5, 285, 2), (61.0, 382, 3)])
def test_audio_token_counts(seconds: float, tokens: int, segments: int) -> None:
    """100 Hz frames halved four times rounding up (calc_seq_len); 30-s segments."""
    prep = fe.prepare(np.full(int(seconds * 24_000), 0.01, np.float32), 24_000)
    assert prep.tokens == tokens and len(prep.segments) == segments
    assert sum(s.shape[0] for s in prep.segments) == prep.wave24.shape[0]


def test_chat_prompt_and_bad_audio() -> None:
    tok = tiny_tokenizer()
    x = audio.load_fixture("en_fox", 24_000)
    inputs = fe.chat_inputs(tok, x, 24_000)
    ids = inputs["input_ids"][0]
    n = fe.prepare(x, 24_000).tokens
    assert int((ids == tok.convert_tokens_to_ids("<|cAUDIO|>")).sum()) == n
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n你是") and text.endswith(
        "<|endofcAUDIO|><|im_end|>\n<|im_start|>assistant\n")
    assert fe.prompt_text(2, first_round=False).startswith("\n<|im_start|>user\n<|begofcAUDIO|>")
    with pytest.raises(fe.AudioError, match="shorter than one 10-ms frame"):
        fe.prepare(np.zeros(100, np.float32), 24_000)
    with pytest.raises(fe.AudioError, match="got shape"):
        fe.prepare(np.zeros((1, 2, 3), np.float32), 24_000)


def test_token_split() -> None:
    text, audio_ids = split_tokens(torch.tensor([5, 99, 100, 105, 100 + 16_384]), 100)
    assert text.tolist() == [5, 99] and audio_ids.tolist() == [0, 5, 16_384]


@pytest.fixture(scope="module")
def tiny_t2w() -> t2w.Token2Wav:
    with weights.quiet():
        skel = weights.skeleton(t2w.Token2Wav, ac.config("vocoder", "tiny"), torch.float32)
        return weights.materialize(skel, {"": "cpu"}, 0)


def test_token2wav_release_folder_round_trip(tiny_t2w: t2w.Token2Wav, tmp_path: Path) -> None:
    tiny_t2w.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.pt",
                                                   "global_mean_var.npy", "prompt"}
    state = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    assert {k.split(".")[0] for k in state} == {"token2latent", "wavegan"}
    assert "wavegan.conv_pre.weight_g" in state and "token2latent.blocks.0.attn.q_proj.weight" in state
    back = t2w.Token2Wav.from_pretrained(tmp_path)
    tokens = torch.randint(0, 16_384, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back(tokens), tiny_t2w(tokens))
    # strict: a missing tensor, a mis-shaped one, a missing prompt file
    broken = {k: v for k, v in state.items() if k != "wavegan.conv_post.bias"}
    torch.save(broken, tmp_path / "model.pt")
    with pytest.raises(ModelLoadError, match="model.pt lacks 1 tensor.*wavegan.conv_post.bias"):
        t2w.Token2Wav.from_pretrained(tmp_path)
    torch.save({**state, "wavegan.conv_post.bias": torch.zeros(3)}, tmp_path / "model.pt")
    with pytest.raises(ModelLoadError, match="tensor wavegan.conv_post.bias .* shape \\[3\\]"):
        t2w.Token2Wav.from_pretrained(tmp_path)
    torch.save(state, tmp_path / "model.pt")
    shutil.rmtree(tmp_path / "prompt")
    with pytest.raises(ModelLoadError, match="missing .*prompt_token.npy"):
        t2w.Token2Wav.from_pretrained(tmp_path)


def test_token2wav_output_length_and_seeded_noise(tiny_t2w: t2w.Token2Wav) -> None:
    tokens = torch.randint(0, 16_384, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = tiny_t2w(tokens), tiny_t2w(tokens)
    assert a.shape == (2, tiny_t2w.output_samples(10))
    assert tiny_t2w.output_samples(10) == (4 * (8 + 10) - (4 * 8 + 3)) * 240
    assert torch.equal(a, b)  # the noise comes from a seeded CPU generator
