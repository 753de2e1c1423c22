"""The verdicts hold in both directions: each planted fault makes a named accuracy-parity check
FAIL, and each honest difference (float32 accumulation noise, another thread count, bfloat16
against a float32 reference) passes every check. The clean sides are run once per dtype and
only the target is run again per fault (faults are planted on the target side only)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from helpers import faults
from helpers.config import RunConfig
from helpers.stages import accuracy_parity as acc
from helpers.stages.accuracy_parity import sides
from helpers.stages.kit import target

# what the report catches on the tiny profile (README "What the verdicts catch"); a fault not
# listed for a dtype is below that dtype's own rounding there, and the README says so
CAUGHT = {
    "float32": ("layer_mlp_1pct", "decode_position", "nan_decode_step", "prefill_mask_dropped",
                "tokenizer_neighbour_code", "codec_gain_10pct"),
    "bfloat16": ("layer_mlp_1pct", "decode_position", "norm_no_fp32", "nan_decode_step",
                 "prefill_mask_dropped", "tokenizer_neighbour_code", "codec_gain_10pct"),
}
HONEST = [n for n, f in faults.FAULTS.items() if f.honest]


def _failed(runs: acc.Runs) -> list[str]:
    secs = [acc.logits_section(runs), acc.layers_section(runs), acc.golden_section(runs),
            acc.modules_section(runs), acc.generation_section(runs), acc.determinism_section(runs),
            acc.frontend_section(runs), acc.components_section(runs)]
    return [c.name for s in secs for c in s.checks if c.passed is False]


@pytest.fixture(scope="module", params=sorted(CAUGHT))
def clean(request, model_cache: Path):  # noqa: ANN001, ANN201 - (cfg, plan, runs)
    cfg = RunConfig.from_params(model="gpa", device="cpu", dtype=request.param)
    plan = acc.plan(target(cfg), golden="on", new_tokens=6, languages="en", fixtures="en_fox")
    return cfg, plan, acc.run_all(cfg, plan)


def _with_fault(clean, name: str) -> acc.Runs:  # noqa: ANN001
    cfg, plan, runs = clean
    cfg = dataclasses.replace(cfg, fault=name)
    ref = runs.reference
    tgt = sides.collect(cfg, plan.target, runs.prompts, plan.new_tokens, inputs=ref.inputs,
                        again=True, reference=ref, clips=runs.clips,
                        component_dtypes=plan.component_dtypes(list(ref.dtypes)),
                        modules="capture" if runs.baseline is not None else "")
    tgt.inputs_note = ref.inputs_note
    base = runs.baseline
    if base is not None:  # the baseline replays the faulty target's module inputs
        again = sides.replay_modules(cfg, plan.baseline_side, tgt.modules)
        base = dataclasses.replace(base, modules=again.modules,
                                   errors={**base.errors, **again.errors})
    return dataclasses.replace(runs, target=tgt, baseline=base)


def test_a_correct_port_passes_every_check(clean) -> None:  # noqa: ANN001
    assert _failed(clean[2]) == []


@pytest.mark.parametrize("name", sorted(faults.FAULTS))
def test_each_fault_fails_a_named_check_and_each_honest_difference_passes(clean, name) -> None:  # noqa: ANN001
    dtype = clean[0].dtype
    if name not in HONEST and name not in CAUGHT[dtype]:  # nothing to assert, so not run
        pytest.skip(f"{name} is not caught at {dtype} on the tiny profile: README "
                    "'What the verdicts catch' says why")
    failed = _failed(_with_fault(clean, name))
    if name in HONEST:
        assert failed == [], f"{name} at {dtype} is an honest difference, yet failed {failed}"
    else:
        assert failed, f"{name} at {dtype} passed every check"
