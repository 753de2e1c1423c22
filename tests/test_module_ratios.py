"""Module by module (stage 4): the capture keeps the outermost single-tensor modules, the
replay makes the baseline's and the golden's outputs from the target's own input, and the
per-row scale error tells a systematic gain from elementwise rounding."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from helpers.stages.accuracy_parity import modules


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))

    def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
        return x + scale * self.mlp(self.norm(x))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.block = Block()
        self.head = nn.Linear(8, 10)

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        return self.head(self.block(self.embed(input_ids), scale=1.0))


def _model() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


def test_capture_keeps_outermost_single_tensor_modules() -> None:
    got = modules.capture(_model(), torch.tensor([[1, 2, 3, 4]]))
    # block: called with a keyword; embed: integer input; mlp's children: inside mlp
    assert sorted(got) == ["block.mlp", "block.norm", "head"]
    assert got["block.mlp"]["input"].shape == (1, 4, 8)


def test_a_planted_gain_fails_and_the_same_module_passes() -> None:
    lm = _model()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    lm.to(torch.bfloat16)
    clean = modules.capture(lm, ids)
    handle = lm.block.mlp.register_forward_hook(lambda _m, _a, out: out * 1.01)
    faulty = modules.capture(lm, ids)
    handle.remove()
    # the baseline (the hook removed: a clean copy) replays each capture's own inputs
    base = modules.replay(lm, clean, torch.bfloat16)
    assert modules.section(clean, base, "bfloat16").checks[0].passed is True
    frame = modules.rows(faulty, modules.replay(lm, faulty, torch.bfloat16), "bfloat16")
    assert frame.iloc[0]["module"] == "block.mlp" and frame.iloc[0]["verdict"] == "FAIL"
    assert (frame.iloc[1:]["verdict"] == "PASS").all()  # the head, fed the faulty input, is fine


def test_row_scale_error_is_a_gain_not_elementwise_noise() -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((64, 256))
    assert abs(modules.row_scale_error(1.01 * g, g) - 0.01) < 1e-12
    noisy = g * (1 + 2.0 ** -8 * rng.choice([-1.0, 1.0], g.shape))
    assert modules.row_scale_error(noisy, g) < 2.0 ** -8 / 4  # ~u / sqrt(width)
    assert modules.row_scale_error(np.zeros((2, 3)), np.zeros((2, 3))) == 0.0
