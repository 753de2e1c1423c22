"""The timing protocol: statistics against numpy, stopping rules, physical sanity on the CPU."""

from __future__ import annotations

import itertools
import json
import math
import time

import numpy as np
import pytest

from helpers import bench, device
from helpers.bench import BenchError, Measurement, Protocol
from helpers.records import LatencyStats


@pytest.fixture(scope="module")
def cpu():
    return device.backend(device.select("cpu"))


# ---- statistics -------------------------------------------------------------------------


@pytest.mark.parametrize("seed,n", [(0, 1), (1, 2), (2, 7), (3, 100), (4, 1001)])
def test_stats_match_numpy(seed, n):
    x = np.random.default_rng(seed).lognormal(-3.0, 0.5, size=n)
    s = bench.stats(x.tolist())
    assert s.count == n
    assert s.mean == pytest.approx(np.mean(x), rel=1e-12)
    for q, got in zip((50, 90, 99), (s.p50, s.p90, s.p99), strict=True):
        assert got == pytest.approx(np.percentile(x, q), rel=1e-12)
    assert s.min == x.min() and s.max == x.max()
    if n > 1:
        assert s.stdev == pytest.approx(np.std(x, ddof=1), rel=1e-12)
    else:
        assert s.stdev is None
    assert s.min <= s.p50 <= s.p90 <= s.p99 <= s.max


def test_stats_known_values():
    s = bench.stats([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.mean, s.p50, s.min, s.max) == (3.0, 3.0, 1.0, 5.0)
    assert s.p90 == pytest.approx(4.6)  # linear interpolation: 4 + 0.6 * (5 - 4)
    assert s.p99 == pytest.approx(4.96)
    assert s.stdev == pytest.approx(math.sqrt(2.5))


def test_stats_are_float64_not_float32():
    # 1 + 1e-9 is lost in float32; a float64 mean keeps it
    s = bench.stats([1.0, 1.0 + 2e-9])
    assert s.mean - 1.0 == pytest.approx(1e-9, rel=1e-6)
    assert isinstance(s.mean, float)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_stats_reject_empty_and_non_finite(bad):
    with pytest.raises(BenchError, match="non-empty|NaN"):
        bench.stats(bad)


def test_latency_stats_json_round_trip():
    s = bench.stats([0.1, 0.2, 0.4])
    back = LatencyStats.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s


# ---- protocol ---------------------------------------------------------------------------


@pytest.mark.parametrize("kw,match", [
    ({"warmup": -1}, "warmup"),
    ({"min_iters": 0}, "min_iters"),
    ({"min_iters": 2.5}, "min_iters"),
    ({"min_seconds": -1}, "min_seconds"),
    ({"max_seconds": float("nan")}, "max_seconds"),
    ({"min_iters": 10, "max_iters": 5}, "max_iters"),
])
def test_protocol_rejects_bad_values(kw, match):
    with pytest.raises(BenchError, match=match):
        Protocol(**kw)


def test_warmup_kept_apart_and_min_iters(cpu):
    calls = itertools.count()
    m = bench.measure(lambda: next(calls), cpu, Protocol(warmup=2, min_iters=4, min_seconds=0))
    assert len(m.warmup_s) == 2 and m.first_call_s == m.warmup_s[0]
    assert m.stats.count == 4 == len(m.samples) == len(m.host_samples)
    assert m.output == 5  # calls 0,1 were warmup; 2..5 timed; the last output is kept
    assert m.stopped_by == "min_iters+min_seconds"


def test_min_seconds_extends_the_run(cpu):
    m = bench.measure(lambda: time.sleep(0.01), cpu,
                      Protocol(warmup=0, min_iters=2, min_seconds=0.1))
    assert sum(m.samples) >= 0.1  # ran until min_seconds of timed work ...
    assert sum(m.samples[:-1]) < 0.1  # ... and stopped as soon as it had it
    assert m.stats.count >= 2
    assert m.first_call_s is None


def test_max_iters_stops_and_says_so(cpu):
    m = bench.measure(lambda: None, cpu,
                      Protocol(warmup=0, min_iters=3, min_seconds=60, max_iters=3))
    assert m.stats.count == 3 and m.stopped_by == "max_iters"


def test_first_call_reported_apart_from_steady_state(cpu):
    state = {"first": True}

    def slow_first():
        if state.pop("first", False):
            time.sleep(0.1)  # e.g. a compilation on the first call

    m = bench.measure(slow_first, cpu, Protocol(warmup=1, min_iters=3, min_seconds=0))
    assert m.first_call_s >= 0.1
    assert m.stats.max < m.first_call_s  # the slow first call is not among the samples


def test_measurement_json_round_trip(cpu):
    m = bench.measure(lambda: None, cpu, Protocol(warmup=1, min_iters=3, min_seconds=0))
    data = json.loads(json.dumps(m.to_dict()))
    back = Measurement.from_dict(data)
    assert back.stats == m.stats and back.samples == m.samples
    assert "warmup" in data["described"] and "perf_counter" in data["described"]


# ---- physical sanity ----------------------------------------------------------------------


def test_sleep_of_0_2_s_is_never_measured_short(cpu):
    # what load cannot break: a sleep never returns early; a busy host only adds time, so the
    # upper bound is generous (the report's own sanity check judges 5% on its host)
    m = bench.measure(lambda: time.sleep(0.2), cpu, Protocol(warmup=1, min_iters=3, min_seconds=0))
    assert m.stats.min >= 0.2
    assert m.stats.p50 < 2.0


# ---- warm up until the figure settles -----------------------------------------------------


class ScriptedTimer:
    """A backend whose timer reports the next of a list of run times (the protocol's logic
    under test, not the clock); every call of the timed function is counted."""

    timer_protocol = "scripted"

    def __init__(self, seconds: list[float]) -> None:
        self.seconds = list(seconds)
        self.runs = 0

    def timer(self):
        backend = self

        class _T:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                backend.runs += 1
                self.seconds = self.host_seconds = backend.seconds.pop(0)

        return _T()


def test_settled_compares_against_the_smaller_run():
    assert bench.settled(1.00, 1.04, 0.05) and bench.settled(1.04, 1.00, 0.05)
    assert not bench.settled(1.00, 1.06, 0.05)


def test_warmup_goes_on_until_two_consecutive_runs_agree():
    be = ScriptedTimer([9.0, 3.0, 2.0, 1.30, 1.02, 1.00, 1.01, 0.99, 1.0, 1.0])
    p = Protocol(warmup=1, min_iters=3, min_seconds=0, settle=0.05, max_warmup=10)
    m = bench.measure(lambda: None, be, p)
    assert m.warmup_s == [9.0, 3.0, 2.0, 1.30, 1.02, 1.00]  # 1.02 vs 1.00 agree within 5%
    assert m.settled is True and m.samples == [1.01, 0.99, 1.0]
    assert "settled: the last two agreed within 5%" in m.describe()
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))).settled is True


def test_warmup_that_never_settles_is_bounded_and_says_so():
    be = ScriptedTimer([4.0, 2.0, 1.0, 0.5, 0.25, 0.25])
    m = bench.measure(lambda: None, be, Protocol(warmup=1, min_iters=1, min_seconds=0,
                                                 settle=0.05, max_warmup=4))
    assert len(m.warmup_s) == 4 and m.settled is False
    assert "NOT settled within 5% after 4 runs" in m.describe()


def test_fixed_warmup_when_settle_is_off_or_warmup_is_zero():
    m = bench.measure(lambda: None, ScriptedTimer([5.0, 1.0, 1.0]),
                      Protocol(warmup=1, min_iters=2, min_seconds=0))
    assert m.warmup_s == [5.0] and m.settled is None
    m = bench.measure(lambda: None, ScriptedTimer([5.0, 1.0]),
                      Protocol(warmup=0, min_iters=2, min_seconds=0, settle=0.05))
    assert m.warmup_s == [] and m.settled is None


@pytest.mark.parametrize("kw,match", [({"settle": 1.5}, "settle"), ({"settle": -0.1}, "settle"),
                                      ({"max_warmup": 0}, "max_warmup")])
def test_protocol_rejects_bad_settle_knobs(kw, match):
    with pytest.raises(BenchError, match=match):
        Protocol(**kw)


def test_ci_stops_as_soon_as_the_mean_is_stable():
    # three samples 1.00, 1.01, 0.99: mean 1.0, 95% CI half-width t(0.975, 2) * 0.01 / sqrt(3)
    be = ScriptedTimer([1.00, 1.01, 0.99, 5.0])
    m = bench.measure(lambda: None, be, Protocol(warmup=0, min_iters=3, min_seconds=0, ci=0.05))
    assert m.samples == [1.00, 1.01, 0.99] and m.stopped_by == "min_iters+min_seconds+ci"
    assert m.ci == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-5)
    assert "mean +/-2.5% (95% CI)" in m.describe()
    assert m.to_dict()["ci_rel_half_width"] == pytest.approx(m.ci)


def test_ci_times_on_while_the_mean_is_unstable_and_stops_at_the_cap():
    be = ScriptedTimer([1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5])
    m = bench.measure(lambda: None, be, Protocol(warmup=0, min_iters=3, min_seconds=0,
                                                 ci=0.05, max_iters=6))
    assert m.stats.count == 6 and m.stopped_by == "max_iters"  # +/-~19%: not stable
    assert m.ci > 0.05
    assert bench.ci_half_width([1.0]) == math.inf


def test_protocol_rejects_a_ci_of_one_or_more():
    with pytest.raises(BenchError, match="ci"):
        Protocol(ci=1.0)


def test_with_ci_the_caps_never_cut_below_the_floor():
    be = ScriptedTimer([3.0, 1.0, 2.0, 1.0])
    m = bench.measure(lambda: None, be, Protocol(warmup=0, min_iters=3, min_seconds=0,
                                                 max_seconds=2.0, ci=0.05))
    assert m.stats.count == 3 and m.stopped_by == "max_seconds"  # 6 s of work: the floor held


def test_stepped_runs_stop_on_the_mean_steps_ci_after_one_run():
    # one run of 0.5 s whose ten steps agree within 1%: the mean step is stable, one run will do
    steps = [0.050, 0.0505, 0.0495, 0.050, 0.0501, 0.0499, 0.050, 0.0502, 0.0498, 0.050]
    m = bench.measure(lambda: "run", ScriptedTimer([0.6, 0.5, 0.5]),
                      Protocol(warmup=1, min_iters=1, min_seconds=0, ci=0.05),
                      steps=lambda out: steps)
    assert m.samples == [0.5] and m.stopped_by == "min_iters+min_seconds+ci"
    assert m.steps == steps and m.ci == pytest.approx(bench.ci_half_width(steps))
    assert "mean step +/-" in m.describe() and "over 10 timed steps" in m.describe()
    back = Measurement.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back.steps == steps and back.ci == pytest.approx(m.ci)


def test_stepped_runs_go_on_while_the_steps_disagree():
    noisy = itertools.cycle([[0.01, 0.09, 0.02, 0.08], [0.05, 0.05, 0.05, 0.05]])
    m = bench.measure(lambda: None, ScriptedTimer([0.2] * 8),
                      Protocol(warmup=0, min_iters=1, min_seconds=0, ci=0.05, max_iters=3),
                      steps=lambda out: next(noisy))
    assert m.stats.count == 3 and m.stopped_by == "max_iters" and len(m.steps) == 12


def test_a_shorter_warmup_is_what_the_warmup_runs_call_and_is_named():
    calls: list[str] = []
    m = bench.measure(lambda: calls.append("run"), ScriptedTimer([0.1, 1.0, 1.0]),
                      Protocol(warmup=1, min_iters=2, min_seconds=0),
                      warm=(lambda: calls.append("warm"), "8 tokens"))
    assert calls == ["warm", "run", "run"] and m.warmup_of == "8 tokens"
    assert m.first_call_s == 0.1 and m.first_full_call_s is None
    assert "1 warmup run(s) of 8 tokens kept apart" in m.describe()
    plain = bench.measure(lambda: None, ScriptedTimer([0.1, 1.0]),
                          Protocol(warmup=1, min_iters=1, min_seconds=0))
    assert plain.first_full_call_s == plain.first_call_s == 0.1 and plain.steps is None
    assert "stability not estimated (one run)" in plain.describe()
