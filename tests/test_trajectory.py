"""Teacher-forced trajectory metrics: near-ties told apart from findings, on hand-built logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import trajectory as tj

LIMITS = tj.Limits(stable_margin=0.1, stable_top1=0.9, near_tie_k=5, near_tie_hit=0.8,
                   cosine_p5=0.99, rel_l2_p95=0.05, source="test")


def _logits(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_a_flip_at_a_near_tie_is_rounding_not_a_finding() -> None:
    ref = _logits([[5.0, 1.0, 0.0], [2.0, 1.99, 0.0], [0.0, 3.0, 1.0]])
    tgt = _logits([[5.0, 1.0, 0.0], [1.99, 2.0, 0.0], [0.0, 3.0, 1.0]])  # step 1 flips
    s = tj.summarize([tj.steps(ref, tgt, k=2)], LIMITS)
    assert (s.stable_steps, s.near_tie_steps) == (2, 1)
    assert s.stable_top1 == 1.0 and s.near_tie_hit == 1.0
    assert all(passed for *_, passed in tj.judge(s, LIMITS)[:2])


def test_a_flip_at_a_stable_step_fails() -> None:
    ref = _logits([[5.0, 1.0, 0.0]] * 4)
    tgt = _logits([[5.0, 1.0, 0.0]] * 3 + [[1.0, 5.0, 0.0]])
    s = tj.summarize([tj.steps(ref, tgt)], LIMITS)
    assert s.stable_top1 == pytest.approx(0.75) and s.stable_misses == [3]
    rows = {name: passed for name, _v, _op, _lim, passed in tj.judge(s, LIMITS)}
    assert rows["stable steps: top-1 agreement"] is False


def test_metrics_in_float64_and_in_range() -> None:
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(8, 50, generator=gen)
    tgt = ref + 1e-3 * torch.randn(8, 50, generator=gen)
    st = tj.steps(ref, tgt)
    assert st.cosine.dtype == np.float64 and (st.cosine <= 1.0).all() and (st.cosine > 0.99).all()
    want = ((tgt.double() - ref.double()).norm(dim=-1) / ref.double().norm(dim=-1)).numpy()
    np.testing.assert_allclose(st.rel_l2, want, rtol=1e-12)
    assert (st.kl >= 0).all()


def test_a_non_finite_step_fails_every_rule() -> None:
    ref = _logits([[5.0, 1.0, 0.0]] * 3)
    tgt = ref.clone()
    tgt[1] = math.nan
    s = tj.summarize([tj.steps(ref, tgt)], LIMITS)
    assert s.nonfinite_steps == 1 and s.first_nonfinite == 1
    assert not any(passed for *_, passed in tj.judge(s, LIMITS))


def test_identical_logits_pass_every_rule() -> None:
    ref = torch.randn(6, 20, generator=torch.Generator().manual_seed(1))
    s = tj.summarize([tj.steps(ref, ref.clone())], LIMITS)
    assert s.rel_l2_p95 == 0.0 and s.cosine_p5 == pytest.approx(1.0)
    assert all(passed for *_, passed in tj.judge(s, LIMITS))


def test_divergence_is_explained_by_the_reference_margin() -> None:
    margins = [1.0, 0.05, 1.0]
    near = tj.divergence([1, 2, 3], [1, 7, 3], margins, LIMITS)
    assert (near.index, near.kind) == (1, "near-tie") and "rounding" in near.describe()
    stable = tj.divergence([1, 2, 3], [1, 2, 9], margins, LIMITS)
    assert (stable.index, stable.kind) == (2, "stable") and "finding" in stable.describe()
    assert tj.divergence([1, 2], [1, 2], margins, LIMITS).kind == "none"
    shorter = tj.divergence([1, 2, 3], [1, 2], margins, LIMITS)
    assert shorter.index == 2


def test_quantizer_codes_near_ties_against_clear_misses() -> None:
    book = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0]], dtype=torch.float64)
    states = torch.tensor([[0.499, 0.0], [0.0, 0.1], [9.0, 9.0]], dtype=torch.float64)
    nearest, rel = tj.code_margins(states, book)
    assert nearest.tolist() == [0, 0, 2]
    assert rel[0] < 0.01 < rel[1]  # frame 0 sits between codes 0 and 1
    c = tj.codes(nearest, [1, 1, 2], rel, margin=0.01)  # frame 0: near-tie; frame 1: clear
    assert (c.total, c.equal, c.near_tie, c.clear) == (3, 1, 1, 1)


def test_limits_come_from_the_thresholds_file_with_a_source() -> None:
    f32, bf16 = tj.Limits.for_dtype("float32"), tj.Limits.for_dtype("bfloat16")
    assert f32.stable_margin == bf16.stable_margin == 0.1
    assert f32.rel_l2_p95 < bf16.rel_l2_p95  # float32 is held to the GPA report's 1 %
    assert f32.source and bf16.source


def test_code_margin_scales_with_the_dtype() -> None:
    assert tj.code_margin("bfloat16") == pytest.approx(16 * 2.0 ** -8)
    assert tj.code_margin("float32") < 1e-5 < tj.code_margin("bfloat16")
