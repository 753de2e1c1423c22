"""Sampled decoding compared as distributions: the bootstrap interval, the pairing by input and
seed, the equivalence verdict on hand-made values, and a real tiny stage-6 run that samples
every input under two seeds on both sides."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.config import RunConfig
from helpers.stages import tasks
from helpers.stages.kit import target
from helpers.tasks import sampled


def test_bootstrap_interval_is_reproducible_and_covers_the_mean() -> None:
    assert sampled.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert sampled.bootstrap_ci([5.0]) == (5.0, 5.0, 5.0)
    assert all(np.isnan(sampled.bootstrap_ci([])))
    x = np.random.default_rng(1).normal(0.3, 1.0, 200)
    mean, low, high = sampled.bootstrap_ci(x)
    assert low < mean < high and mean == pytest.approx(x.mean())
    assert high - low == pytest.approx(2 * 1.96 * x.std(ddof=1) / np.sqrt(x.size), rel=0.15)
    assert sampled.bootstrap_ci(x) == (mean, low, high)


def _samples(target_rate: float) -> pd.DataFrame:
    rows = []
    for seed in range(3):
        for clip in ("a", "b"):
            rows.append({"side": "reference", "task": "stt", "input": clip, "seed": seed,
                         "generated ids": 20, "speech seconds": None, "error rate": 0.10})
            rows.append({"side": "target", "task": "stt", "input": clip, "seed": seed,
                         "generated ids": 21, "speech seconds": None,
                         "error rate": target_rate})
    rows.append({"side": "target", "task": "stt", "input": "c", "seed": 0,  # unpaired
                 "generated ids": 99, "speech seconds": None, "error rate": 0.9})
    return pd.DataFrame(rows)


def test_pairs_summary_and_verdicts_on_hand_values() -> None:
    pairs = sampled.paired(_samples(0.125))
    assert set(pairs["input"]) == {"a", "b"} and len(pairs) == 12  # 6 pairs x 2 measures
    table = sampled.summary(pairs).set_index("measure")
    assert table.at["generated ids", "mean"] == pytest.approx(1.05)  # 21 / 20
    assert table.at["generated ids", "inside"]  # inside 0.9-1.1
    assert table.at["error rate", "mean"] == pytest.approx(2.5)  # 12.5 - 10 points
    assert not table.at["error rate", "inside"]  # more than 1 point worse
    judged = {c.name.split(",")[0]: c.passed for c in sampled.checks(sampled.summary(pairs), True)}
    assert judged == {"stt: sampled generated ids": True, "stt: sampled error rate": False}
    better = sampled.summary(sampled.paired(_samples(0.05))).set_index("measure")
    assert better.at["error rate", "inside"]  # better than the reference is equivalent
    assert all(c.passed is None for c in sampled.checks(sampled.summary(pairs), False))


@pytest.mark.slow
def test_release_decoding_samples_every_input_under_each_seed(model_cache, tmp_path) -> None:  # noqa: ANN001
    cfg = RunConfig.from_params(model="gpa", device="cpu", dtype="float32", seed=3)
    s = tasks.settings(cfg, max_new_tokens=6, decoding="release", seeds=2, roundtrip=False)
    runs = tasks.run_all(target(cfg), fixtures="en_fox", s=s, run_dir=str(tmp_path / "a"))
    assert s.seeds == 2 and not runs.reference.error and not runs.target.error
    assert {k[2] for k in runs.reference.samples} == {1}
    pairs = tasks.sampled_pairs(runs)
    assert set(pairs["seed"]) == {3, 4}  # seed and seed + 1, both sides paired
    assert set(pairs["task"]) == {"stt", "tts-a", "vc"}
    # the seed moves the samples: some task writes other ids under the second seed
    first = {k: o.tokens for k, o in runs.reference.outputs.items()}
    assert any(o.tokens != first[(t, c)] for (t, c, _k), o in runs.reference.samples.items())
    names = [c.name for c in tasks.checks(runs, tasks.compare(runs)) if "sampled" in c.name]
    assert names and all("interval inside the margin" in n for n in names)
    assert tasks.sampled_view(runs).table.shape[0] == len(names)
    # a second run takes its reference, every seed's outputs included, from the cache
    s2 = tasks.settings(cfg, max_new_tokens=6, decoding="release", seeds=2, roundtrip=False)
    again = tasks.run_all(target(cfg), fixtures="en_fox", s=s2, run_dir=str(tmp_path / "b"))
    assert again.store.source is not None
    assert {k: o.tokens for k, o in again.reference.samples.items()} == {
        k: o.tokens for k, o in runs.reference.samples.items()}
    assert tasks.sampled_pairs(again).equals(pairs)
