"""Planted faults change what they claim to change, and come out again without a trace."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import faults, generate
from helpers.config import RunConfig
from helpers.errors import ConfigError
from helpers.models import get


@pytest.fixture(scope="module")
def gpa(model_cache: Path):  # noqa: ANN201 - a LoadedModel
    cfg = RunConfig.from_params(model="gpa")
    return get("gpa").load(torch.device("cpu"), torch.float32, **cfg.recipe_args())


def _forced_logits(loaded, ids: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    return generate.decode(loaded.lm, {"input_ids": ids}, forced.shape[1], forced=forced).logits


def test_unknown_fault_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="decode_position"):
        faults.get("no_such_fault")


@pytest.mark.parametrize("name", [n for n, f in faults.FAULTS.items() if f.needs == "lm"])
def test_each_lm_fault_is_removed_exactly(gpa, name: str) -> None:  # noqa: ANN001
    ids = gpa.tokenizer("The capital of France is Paris.", return_tensors="pt").input_ids
    clean = generate.decode(gpa.lm, {"input_ids": ids}, 6, keep_logits=True)
    planted = faults.plant(name, gpa)
    assert planted is not None
    faulty = _forced_logits(gpa, ids, clean.ids)
    planted.remove()
    again = _forced_logits(gpa, ids, clean.ids)
    assert torch.equal(again, clean.logits), f"{name} left a trace after remove()"
    changed = not torch.equal(torch.nan_to_num(faulty, nan=1e9), clean.logits)
    # norm_no_fp32 is no fault at float32 (the point of planting it at bfloat16); one thread
    # may or may not reorder a reduction of this size
    assert changed or name in ("norm_no_fp32", "one_thread")


def test_decode_position_leaves_prefill_alone(gpa) -> None:  # noqa: ANN001
    ids = gpa.tokenizer("Once upon a time", return_tensors="pt").input_ids
    clean = generate.decode(gpa.lm, {"input_ids": ids}, 4, keep_logits=True)
    planted = faults.plant("decode_position", gpa)
    faulty = _forced_logits(gpa, ids, clean.ids)
    planted.remove()
    assert torch.equal(faulty[:, 0], clean.logits[:, 0])  # the prefill's logits
    assert not torch.equal(faulty[:, 1:], clean.logits[:, 1:])


def test_nan_lands_on_one_decode_step(gpa) -> None:  # noqa: ANN001
    ids = gpa.tokenizer("Hello", return_tensors="pt").input_ids
    clean = generate.decode(gpa.lm, {"input_ids": ids}, 6)
    planted = faults.plant("nan_decode_step", gpa)
    faulty = _forced_logits(gpa, ids, clean.ids)
    planted.remove()
    bad = [i for i in range(6) if not torch.isfinite(faulty[0, i]).all()]
    assert bad == [3]


def test_audio_faults_apply_only_where_the_component_is(gpa) -> None:  # noqa: ANN001
    assert faults.applies(faults.get("tokenizer_neighbour_code"), gpa)
    assert faults.applies(faults.get("codec_gain_10pct"), gpa)


def test_codec_gain_scales_the_waveform(gpa) -> None:  # noqa: ANN001
    codec = gpa.components["codec"]
    sem = torch.zeros(1, 10, dtype=torch.long)
    glob = torch.zeros(1, 1, 32, dtype=torch.long)
    with torch.no_grad():
        clean = codec.detokenize(sem, glob)
        planted = faults.plant("codec_gain_10pct", gpa)
        loud = codec.detokenize(sem, glob)
        planted.remove()
        again = codec.detokenize(sem, glob)
    torch.testing.assert_close(loud, clean * 1.1)
    assert torch.equal(again, clean)
