"""Parity metrics on analytic cases: identical, scaled, orthogonal, opposite, NaN, all-zero."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import parity

A = np.array([3.0, -1.0, 2.0, 0.5])


# ---- cosine ------------------------------------------------------------------------------

@pytest.mark.parametrize(("b", "expected"), [
    (A, 1.0),                                     # identical
    (2.5 * A, 1.0),                               # scaled
    (-A, -1.0),                                   # opposite
    (np.array([1.0, 3.0, 0.0, 0.0]), 0.0),        # orthogonal: 3 - 3 = 0
])
def test_cosine_analytic(b: np.ndarray, expected: float) -> None:
    assert parity.cosine(b, A) == pytest.approx(expected, abs=1e-15)


def test_cosine_of_identical_vectors_is_exactly_one() -> None:
    x = np.random.default_rng(0).standard_normal(1000)
    assert parity.cosine(x, x.copy()) == 1.0


def test_cosine_stays_in_range_for_near_parallel_vectors() -> None:
    # many near-identical large values: the naive formula can round above 1
    x = np.full(10_000, 1.0e6) + np.arange(10_000) * 1e-9
    c = parity.cosine(x, x * (1 + 1e-16))
    assert -1.0 <= c <= 1.0


def test_cosine_of_huge_values_does_not_overflow() -> None:
    assert parity.cosine(A * 1e300, A * 1e300) == pytest.approx(1.0)


def test_cosine_zero_vectors() -> None:
    z = np.zeros(4)
    assert parity.cosine(z, z) == 1.0
    assert parity.cosine(z, A) == 0.0


def test_cosine_nan_is_nan() -> None:
    assert math.isnan(parity.cosine(np.array([1.0, np.nan]), np.array([1.0, 2.0])))


# ---- relative L2 -------------------------------------------------------------------------

@pytest.mark.parametrize(("t", "expected"), [
    (A, 0.0),                                     # identical
    (2.0 * A, 1.0),                               # scaled by 2: ||A|| / ||A||
    (-A, 2.0),                                    # opposite
])
def test_rel_l2_analytic(t: np.ndarray, expected: float) -> None:
    assert parity.rel_l2(t, A) == pytest.approx(expected, abs=1e-15)


def test_rel_l2_orthogonal_same_norm_is_sqrt2() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert parity.rel_l2(b, a) == pytest.approx(math.sqrt(2.0))


def test_rel_l2_zero_reference() -> None:
    z = np.zeros(3)
    assert parity.rel_l2(z, z) == 0.0
    assert parity.rel_l2(np.ones(3), z) == math.inf


def test_rel_l2_of_huge_values_does_not_overflow() -> None:
    assert parity.rel_l2(2e200 * A, 1e200 * A) == pytest.approx(1.0)


# ---- compare -----------------------------------------------------------------------------

def test_compare_identical_is_exact() -> None:
    c = parity.compare(A, A)
    assert (c.cosine, c.max_abs, c.mean_abs, c.rel_l2, c.rmse, c.within_tol, c.nonfinite) == (
        1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0)


def test_compare_scaled_errors() -> None:
    c = parity.compare(1.01 * A, A, "bfloat16")
    assert c.cosine == pytest.approx(1.0)
    assert c.max_abs == pytest.approx(0.03)
    assert c.mean_rel == pytest.approx(0.01)
    assert c.max_rel == pytest.approx(0.01)
    assert c.rel_l2 == pytest.approx(0.01)
    assert c.within_tol == 0.0  # 1 % is above bfloat16's 2^-8 ~ 0.39 %


def test_compare_within_tolerance_share_and_small_values() -> None:
    ref = np.array([1.0, 1.0, 1e-5, 1e-5])
    # 0.1 % error (inside bf16's 2^-8), 1 % error (outside), small value off by 1e-4 (inside
    # the 2^-10 small-value bound), small value off by 1e-2 (outside)
    tgt = np.array([1.001, 1.01, 1e-5 + 1e-4, 1e-5 + 1e-2])
    c = parity.compare(tgt, ref, "bfloat16")
    assert c.within_tol == pytest.approx(0.5)
    assert c.max_rel == pytest.approx(0.01)  # small values are judged absolutely, not divided


def test_compare_nan_in_target_is_counted_and_fails_the_network_rule() -> None:
    t = A.copy()
    t[1] = np.nan
    t[2] = np.inf
    c = parity.compare(t, A)
    assert c.nonfinite == 2
    assert math.isnan(c.cosine) and c.max_abs == math.inf and c.rel_l2 == math.inf
    assert c.within_tol == pytest.approx(0.5)
    ok, why = parity.network_verdict(c)
    assert not ok and "2 NaN/Inf" in why


def test_compare_nan_in_both_is_not_a_target_error_and_cosine_uses_finite_pairs() -> None:
    t, r = A.copy(), A.copy()
    t[0] = r[0] = np.nan
    c = parity.compare(t, r)
    assert c.nonfinite == 0
    assert c.cosine == pytest.approx(1.0)
    assert parity.network_verdict(c)[0]


def test_compare_all_zero() -> None:
    z = np.zeros(5)
    c = parity.compare(z, z)
    assert (c.cosine, c.rel_l2, c.max_abs, c.within_tol) == (1.0, 0.0, 0.0, 1.0)
    c = parity.compare(np.ones(5), z)
    assert c.cosine == 0.0 and c.rel_l2 == math.inf
    assert not parity.network_verdict(c)[0]


def test_compare_reads_torch_low_precision_and_rejects_shape_mismatch() -> None:
    t = torch.tensor(A, dtype=torch.bfloat16)
    c = parity.compare(t, A, "torch.bfloat16")
    assert c.dtype == "bfloat16" and c.max_abs == 0.0  # these values are exact in bfloat16
    with pytest.raises(ValueError, match="shapes differ"):
        parity.compare(np.zeros(3), np.zeros(4))


def test_compare_empty() -> None:
    c = parity.compare(np.zeros(0), np.zeros(0))
    assert c.n == 0 and c.within_tol == 1.0


# ---- whole-network verdict ---------------------------------------------------------------

def _cmp(cosine: float, max_abs: float, nonfinite: int = 0) -> parity.Comparison:
    return parity.Comparison(10, cosine, max_abs, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, nonfinite,
                             "float32")


@pytest.mark.parametrize(("cosine", "max_abs", "ok"), [
    (0.999, 0.5, True),      # cosine fine, max abs within 1
    (0.98, 0.0005, True),    # low cosine is forgiven when max abs <= 0.001
    (0.98, 0.01, False),     # cosine < 0.99 and max abs > 0.001
    (0.85, 0.0001, False),   # cosine < 0.9, whatever the max abs
    (0.9999, 1.5, False),    # max abs > 1
    (math.nan, 0.0, False),  # an undefined cosine never passes
])
def test_network_rule(cosine: float, max_abs: float, ok: bool) -> None:
    assert parity.network_verdict(_cmp(cosine, max_abs))[0] is ok


def test_network_rule_nonfinite() -> None:
    assert not parity.network_verdict(_cmp(1.0, 0.0, nonfinite=3))[0]


# ---- top-k, KL ---------------------------------------------------------------------------

def test_topk_identical_and_reversed() -> None:
    logits = np.arange(10.0)[None, :].repeat(3, 0)  # [3, 10]
    assert parity.topk_agreement(logits, logits, k=5) == (1.0, 5.0)
    top1, overlap = parity.topk_agreement(-logits, logits, k=5)
    assert top1 == 0.0 and overlap == 0.0


def test_topk_partial_overlap() -> None:
    r = np.array([[9.0, 8, 7, 6, 5, 0, 0, 0]])
    t = np.array([[9.0, 8, 7, 0, 0, 6, 5, 0]])  # same top 3, other two swapped out
    assert parity.topk_agreement(t, r, k=5) == (1.0, 3.0)
    assert parity.topk_agreement(t, r, k=50) == (1.0, 8.0)  # k larger than the vocabulary


def test_kl_analytic() -> None:
    r = np.log(np.array([[0.5, 0.5]]))
    t = np.log(np.array([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert parity.kl_divergence(r, t) == pytest.approx(expected)
    assert parity.kl_divergence(r, r) == 0.0
    assert parity.kl_divergence(r, r + 7.0) == pytest.approx(0.0, abs=1e-15)  # shift invariant


def test_kl_masked_tokens_and_nan() -> None:
    masked = np.array([[1.0, 2.0, -np.inf]])
    assert parity.kl_divergence(masked, masked) == 0.0
    assert parity.kl_divergence(np.array([[1.0, 2.0, 3.0]]), masked) == math.inf
    assert math.isnan(parity.kl_divergence(masked, np.array([[1.0, np.nan, 3.0]])))
    assert math.isnan(parity.kl_divergence(np.array([[1.0, np.inf, 3.0]]), masked))  # +Inf


# ---- tolerances, error ratios, thresholds file -------------------------------------------

def test_tolerances_are_msprobe_constants() -> None:
    assert parity.tolerance("bfloat16").rtol == 2.0**-8
    assert parity.tolerance("torch.float16").rtol == 2.0**-10
    assert parity.tolerance("float32").small_value == 2.0**-20
    assert parity.tolerance("float64").dtype == "float64"
    assert parity.tolerance("float64").rtol == 2.0**-20


def test_error_ratios() -> None:
    golden = A
    ref = A * (1 + 1e-6)
    assert parity.error_ratios(ref, ref, golden, "float32") == pytest.approx(
        {"rmse": 1.0, "mean_rel": 1.0, "max_rel": 1.0})
    worse = A * (1 + 3e-6)
    ratios = parity.error_ratios(worse, ref, golden, "float32")
    assert ratios["rmse"] == pytest.approx(3.0)
    assert not parity.ratios_pass(ratios)
    assert parity.error_ratios(golden, golden, golden, "float32")["rmse"] == 1.0


def test_every_threshold_names_a_known_source() -> None:
    th = parity.thresholds()
    sources = th["sources"]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "source" in node:
                assert node["source"] in sources, node
            for value in node.values():
                walk(value)

    walk({k: v for k, v in th.items() if k != "sources"})


# ---- token ids, waveforms, the rules the stages share -----------------------------------------


def test_token_agreement_and_first_divergence() -> None:
    assert parity.token_agreement([1, 2, 3], [1, 2, 3]) == {
        "agreement_pct": 100.0, "matches": 3, "first_divergence": None, "tokens_target": 3,
        "tokens_reference": 3, "identical": True}
    a = parity.token_agreement([1, 9, 3, 4], [1, 2, 3])
    assert a["first_divergence"] == 1 and a["agreement_pct"] == 50.0 and not a["identical"]
    assert parity.token_agreement([1, 2], [1, 2, 3])["first_divergence"] == 2  # a prefix
    t = parity.token_agreement(torch.tensor([[1, 2], [3, 4]]), np.array([1, 2, 3, 5]))
    assert t["matches"] == 3 and t["first_divergence"] == 3  # tensors and arrays, flattened
    assert parity.token_agreement([], [])["agreement_pct"] == 100.0


def test_waveform_metrics_of_a_known_error() -> None:
    from helpers import audio

    t = np.arange(16_000) / 16_000
    ref = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    m = parity.waveform_metrics(1.1 * ref, ref, audio.codec_spec())
    assert m["snr_db"] == pytest.approx(20.0, abs=1e-4)  # noise 0.1 x signal: 10 log10(100)
    # a gain moves every unclamped log-mel bin by 20 log10(1.1) dB, clamped bins not at all
    assert 0.1 < m["mel_distance_db"] <= 20 * math.log10(1.1) + 1e-6
    assert m["cosine"] == pytest.approx(1.0) and m["network_ok"]  # cosine cannot see a gain
    assert m["peak_ref"] == pytest.approx(0.5, abs=1e-4)
    same = parity.waveform_metrics(ref, np.concatenate([ref, ref]), audio.codec_spec())
    assert same["snr_db"] == math.inf and same["mel_distance_db"] == 0.0  # common length
    assert parity.waveform_metrics(ref[:0], ref, audio.codec_spec()) == {}


def test_peak_normalize_and_the_rules() -> None:
    y, level = parity.peak_normalize(np.array([0.0, -0.01, 0.005], np.float32))
    assert level == pytest.approx(-40.0) and float(np.abs(y).max()) == pytest.approx(10 ** (-1 / 20))
    zero, level = parity.peak_normalize(np.zeros(4))
    assert level == -math.inf and not zero.any()
    floor, src = parity.snr_rule()
    assert floor == 16.9 and "cosine >= 0.99" in src  # -10 log10(1/0.99^2 - 1) = 16.94
    op, limit, src = parity.agreement_rule()
    assert (op, limit) == (">", 99.0) and "top-1 agreement" in src


@pytest.mark.parametrize("case", ["close", "equal", "nan in target", "inf on both", "zeros"])
def test_compare_block_by_block_gives_the_whole_comparison(monkeypatch, case):
    """Inputs above parity.BLOCK elements are read a block at a time (bounded float64
    temporaries); every metric equals the whole-array one to the last bits of its sums, and
    top-k agreement and KL, taken a block of rows at a time, equal it exactly."""
    import math

    import torch

    g = torch.Generator().manual_seed(0)
    r = torch.randn(40, 500, generator=g) * 5
    t = {"close": (r + 0.01 * torch.randn(40, 500, generator=g)).bfloat16(),
         "equal": r.clone(), "nan in target": r.clone(), "inf on both": r.clone(),
         "zeros": torch.zeros(40, 500)}[case]
    if case == "nan in target":
        t[3, 4] = float("nan")
    if case == "inf on both":
        t[:, 7] = -math.inf
        r = r.clone()
        r[:, 7] = -math.inf
    whole = parity.compare(t, r, "bfloat16").to_dict()
    top, kl = parity.topk_agreement(t, r), parity.kl_divergence(r, t)
    monkeypatch.setattr(parity, "BLOCK", 777)  # 26 blocks, the last one partial
    blocks = parity.compare(t, r, "bfloat16").to_dict()
    for key, value in whole.items():
        if isinstance(value, float) and math.isfinite(value):
            assert blocks[key] == pytest.approx(value, rel=1e-12, abs=1e-300), key
        else:
            assert str(blocks[key]) == str(value), key
    assert parity.topk_agreement(t, r) == top
    assert str(parity.kl_divergence(r, t)) == str(kl)
