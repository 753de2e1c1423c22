"""Accuracy parity stage: real tiny models on the CPU, a planted disagreement, planted NaNs,
a failed load, and the stage notebook run by papermill."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import papermill
import pytest
import torch

from helpers import models, parity, paths
from helpers.config import RunConfig
from helpers.errors import ConfigError
from helpers.models.base import LoadedModel, shipped_tokenizer
from helpers.stages import accuracy_parity as accuracy
from helpers.stages.kit import target

NOTEBOOK = paths.NOTEBOOKS / "04_accuracy_parity.ipynb"


def _verdicts(checks: list) -> dict[str, bool | None]:
    return {c.name: c.passed for c in checks}


# ---- plan --------------------------------------------------------------------------------

def test_plan_on_a_cpu_only_machine_compares_bfloat16_with_float32() -> None:
    p = accuracy.plan(target(RunConfig.from_params(model="gpa")))
    assert (p.target.label, p.reference.label) == ("cpu bfloat16", "cpu float32")
    assert p.new_tokens == 8 and p.languages == ("en", "zh")
    assert "bfloat16 arithmetic against float32" in p.describe()


@pytest.mark.parametrize(("knobs", "message"), [
    ({"reference_dtype": "int8"}, "reference_dtype 'int8' is not valid"),
    ({"golden": "maybe"}, "golden 'maybe' is not valid; use auto"),
    ({"new_tokens": -1}, "new_tokens must be an integer >= 0"),
    ({"languages": "en,fr"}, "unknown ['fr']"),
    ({"decode_batch": -1}, "decode_batch must be an integer >= 0"),
])
def test_plan_rejects_bad_knobs_with_a_fix(knobs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        accuracy.plan(target(RunConfig.from_params(model="gpa")), **knobs)


def test_golden_decision_modes() -> None:
    assert accuracy.golden_decision("off", 1000)[0] is False
    assert accuracy.golden_decision("auto", 1000)[0] is True
    too_big, why = accuracy.golden_decision("auto", 10**13)  # 80 TB of float64
    assert not too_big and "free host memory" in why
    assert accuracy.golden_decision("on", 0)[0] is False  # nothing loaded: nothing to size


# ---- the stage notebook on the tiny GPA recipe ---------------------------------------------

@pytest.fixture(scope="module")
def gpa_stage(default_run) -> dict:  # noqa: ANN001 - a RunOutcome
    """The stage notebook as the session's default run executed it (papermill, the notebook's
    own defaults: stage 4 reads nothing from the stages before it)."""
    run_dir = default_run.run_dir
    result = json.loads((run_dir / "results" / "accuracy_parity.json").read_text())
    result["run_dir"] = run_dir
    return result


def test_notebook_runs_the_tiny_gpa_parity_and_passes(gpa_stage: dict) -> None:
    assert gpa_stage["status"] == "passed", [c for c in gpa_stage["checks"] if c["passed"] is False]
    m = gpa_stage["metrics"]
    assert m["plan"]["target"] == "cpu bfloat16" and m["plan"]["reference"] == "cpu float32"
    # bfloat16 against float32 differs, but by a fraction of a percent on the tiny model
    assert 0.01 < m["logits"]["rel_l2_pct"] < 5.0
    assert 0.999 < m["logits"]["cosine"] <= 1.0
    assert m["logits"]["prompts"] == 16 and m["logits"]["nonfinite"] == 0
    assert len(m["layers"]["rel_l2_pct"]) == 3  # embeddings + 2 layers of the tiny model
    assert m["determinism"]["logits_bitwise_equal"] is True
    assert m["determinism"]["tokens_identical_pct"] == 100.0
    assert m["audio_frontend"]["rows"] == 14  # 7 fixtures, as computed and as bf16 input
    comps = m["audio_components"]["components"]  # gpa's speech tokenizer and codec, worst cases
    assert 50 < comps["speech_tokenizer"]["agreement_pct_min"] <= 100
    assert comps["codec"]["cosine_min"] > 0.999
    names = {c["name"] for c in gpa_stage["checks"]}
    assert {"logits: msprobe whole-network rule", "logits: relative L2 (%)",
            "determinism: greedy tokens identical across two runs (%)"} <= names
    assert all(c["source"] for c in gpa_stage["checks"])


def test_notebook_compares_the_audio_components_on_every_fixture(gpa_stage: dict) -> None:
    from helpers import audio

    m = gpa_stage["metrics"]["audio_components"]
    assert m["dtype"] == "bfloat16" and m["reference"] == "cpu float32"
    fixtures = m["fixtures"]
    assert len(fixtures) == len(audio.fixtures()) and all(f["ok"] for f in fixtures)
    comps = m["components"]
    assert set(comps) == {"speech_tokenizer", "codec"}
    assert all(c["inputs_ok"] == len(fixtures) for c in comps.values())
    assert 0 <= comps["speech_tokenizer"]["agreement_pct_min"] <= 100
    assert comps["codec"]["snr_db_min"] >= parity.snr_rule()[0]
    # BiCodec's two token streams are compared apart; the dtypes are recorded
    assert 0 <= comps["codec"]["semantic_agreement_pct_min"] <= 100
    assert 0 <= comps["codec"]["global_agreement_pct_min"] <= 100
    assert comps["codec"]["dtype"] == "bfloat16" and comps["codec"]["upstream_dtype"] == "float32"
    names = [c["name"] for c in gpa_stage["checks"]]
    assert "speech_tokenizer: tokens agree device vs CPU (%, lowest fixture)" in names
    assert "codec: decoded waveform (CPU codes) SNR device vs CPU (dB, lowest fixture)" in names
    # players for the three default fixtures: the input and the codec's two outputs each,
    # every one with its print figure
    text = (Path(gpa_stage["run_dir"]) / "notebooks" / NOTEBOOK.name).read_text()
    assert text.count("data:audio/wav;base64,") == 9
    assert "print-only" in text and "random weights" in text


def test_notebook_writes_the_layer_figure_and_its_wall_time(gpa_stage: dict) -> None:
    assert gpa_stage["figures"] == ["accuracy_parity-layers.png", *(
        f"accuracy_parity-fixture-{n}.png" for n in ("en_fox", "zh_weather", "en_stereo_48k"))]
    assert (Path(gpa_stage["run_dir"]) / "figures" / "accuracy_parity-layers.png").stat().st_size > 5000
    # the floor is 30 s on an idle 2-core CPU; shared test machines get slack
    assert gpa_stage["seconds"] > 0


def test_notebook_reports_the_golden_separately(gpa_stage: dict) -> None:
    rows = {r["output"]: r for r in gpa_stage["metrics"]["golden"]["rows"]}
    # float32's own error against float64 is orders of magnitude below bfloat16's
    assert rows["logits"]["reference_rel_l2_pct"] * 100 < rows["logits"]["target_rel_l2_pct"]
    verdicts = {c["name"]: c["passed"] for c in gpa_stage["checks"]}
    # the bfloat16 target's error is held to the CPU in bfloat16 (the baseline), at equal dtypes
    assert verdicts["golden: logits error ratio"] is True
    assert rows["logits"]["comparator"] == "baseline"


# ---- the tiny Covo recipe: audio encoder and adapter -------------------------------------

@pytest.fixture(scope="module")
def covo_runs() -> accuracy.Runs:
    cfg = RunConfig.from_params(model="covo-audio-chat")
    return accuracy.run_all(cfg, accuracy.plan(target(cfg), new_tokens=4, languages="en",
                                               fixtures="en_fox,zh_ai"))


def test_covo_parity_compares_each_audio_component(covo_runs: accuracy.Runs) -> None:
    assert covo_runs.errors().empty
    # the encoder is compared on the release's own front end, not a plain log-mel
    assert covo_runs.reference.inputs_note["audio_encoder"].startswith("the recipe's release")
    sec = accuracy.components_section(covo_runs)
    assert set(sec.table["component"]) == {"audio_encoder", "adapter", "vocoder"}
    rows = sec.table[sec.table["component"] != "vocoder"].set_index("component")
    assert "fixture en_fox" in rows.loc["audio_encoder", "input"]
    assert rows.loc["audio_encoder", "shape"] == "1x1500x48"
    floats = rows.loc[["audio_encoder", "adapter"], "rel_l2_pct"]
    assert (floats > 0.01).all() and (floats < 5).all()
    voc = sec.table[sec.table["component"] == "vocoder"]
    assert len(voc) == len(covo_runs.clips) and (voc["snr_db"] > parity.snr_rule()[0]).all()
    assert all(_verdicts(sec.checks).values())


def test_covo_parity_lm_and_golden(covo_runs: accuracy.Runs) -> None:
    logits = accuracy.logits_section(covo_runs)
    assert len(logits.table) == 8 and logits.metrics["positions"] > 8
    assert all(v is not False for v in _verdicts(logits.checks).values())
    gold = accuracy.golden_section(covo_runs)
    assert list(gold.table["output"]) == ["logits", "last hidden state",
                                          "teacher-forced step logits", "audio_encoder",
                                          "adapter", "vocoder waveform"]
    gen = accuracy.generation_section(covo_runs)
    assert gen.metrics["new_tokens"] == 4 and 0 <= gen.metrics["match_pct"] <= 100


def test_frontend_on_the_cpu_is_exact_as_computed_and_bf16_as_model_input(
        covo_runs: accuracy.Runs) -> None:
    sec = accuracy.frontend_section(covo_runs)
    assert len(sec.table) == 2 * len(covo_runs.clips)
    computed = sec.table[sec.table["as"] == "float32 on the device"]
    cast = sec.table[sec.table["as"] == "model input (bfloat16)"]
    assert (computed["max_abs"] == 0).all() and (computed["cosine"] == 1).all()
    # bfloat16 rounding (8 significant bits) of values within about [-1.5, 1.5]
    assert (cast["max_abs"] > 0).all() and (cast["max_abs"] < 2**-7).all()
    assert all(_verdicts(sec.checks).values())


# ---- equal configurations: exactly zero, and the benchmark ratios judged -----------------

def test_same_configuration_is_exactly_equal_and_ratios_pass() -> None:
    cfg = RunConfig.from_params(model="gpa", dtype="float32")
    runs = accuracy.run_all(cfg, accuracy.plan(target(cfg), new_tokens=2, languages="zh",
                                               fixtures="en_fox"))
    assert runs.plan.same_config
    logits = accuracy.logits_section(runs)
    assert logits.metrics["rel_l2_pct"] == 0.0 and logits.metrics["top1_agreement_pct"] == 100.0
    assert all(_verdicts(logits.checks)[f"logits: {k}"] for k in accuracy.LOGIT_LABELS.values())
    gold = accuracy.golden_section(runs)
    assert (gold.table["rmse_ratio"] == 1.0).all()
    assert all(_verdicts(gold.checks).values())  # judged, since both run float32


# ---- planted faults ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def deep_pair() -> tuple[LoadedModel, LoadedModel]:
    """A 6-layer Qwen3 (the GPA class) as float32 reference and bfloat16 target."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = shipped_tokenizer()
    torch.manual_seed(0)
    lm = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).eval()

    def loaded(model: torch.nn.Module, dtype: torch.dtype) -> LoadedModel:
        return LoadedModel(models.get("gpa"), "tiny", "test: 6 layers", {"lm": model}, model, tok,
                           torch.device("cpu"), dtype, {}, {})

    return loaded(lm, torch.float32), loaded(lm, torch.bfloat16)


@pytest.fixture(scope="module")
def deep_reference(deep_pair) -> tuple[accuracy.Plan, list, accuracy.SideRun]:
    """The float32 side, run once: 3 English prompts, 3 greedy tokens."""
    p = accuracy.plan(target(RunConfig.from_params(model="gpa")), new_tokens=3, languages="en")
    prompts = accuracy.load_prompts(p.languages)[:3]
    return p, prompts, accuracy.collect_loaded(deep_pair[0], p.reference, prompts, p.new_tokens)


def _deep_runs(pair, reference, plant: callable, generate: bool = False) -> accuracy.Runs:
    """The bfloat16 target with `plant` applied to its own copy of the weights."""
    p, prompts, ref = reference
    target_lm = copy.deepcopy(pair[1].lm).to(torch.bfloat16)
    with torch.no_grad():
        plant(target_lm)
    target = dataclasses.replace(pair[1], components={"lm": target_lm}, model=target_lm)
    tgt = accuracy.collect_loaded(target, p.target, prompts, p.new_tokens if generate else 0,
                                  again=generate, reference=ref if generate else None)
    return accuracy.Runs(p, prompts, ref, tgt, None, "no golden in this test")


@pytest.mark.parametrize("layer", [1, 3, 5])
def test_layer_analysis_flags_a_perturbed_layer(deep_pair, deep_reference, layer: int) -> None:
    def plant(lm: torch.nn.Module) -> None:
        w = lm.model.layers[layer].mlp.down_proj.weight  # [H, I]
        gen = torch.Generator().manual_seed(layer)
        w.add_(0.3 * w.float().std() * torch.randn(w.shape, generator=gen).to(w.dtype))

    runs = _deep_runs(deep_pair, deep_reference, plant)
    sec = accuracy.layers_section(runs)
    assert sec.metrics["largest_increase_index"] == layer + 1  # state 0 is the embeddings
    assert sec.metrics["largest_increase_state"].startswith(f"layer {layer}")
    increases = sec.table["increase_pct"].sort_values(ascending=False).to_numpy()
    assert increases[0] > 2 * increases[1]  # it stands out from bfloat16's gradual growth


def test_unperturbed_bfloat16_stays_small(deep_pair, deep_reference) -> None:
    runs = _deep_runs(deep_pair, deep_reference, lambda lm: None)
    frame = accuracy.layers_section(runs).table
    assert frame["rel_l2_pct"].max() < 3.0  # bf16 rounding alone stays around a percent
    assert all(v is not False for v in _verdicts(accuracy.logits_section(runs).checks).values())


def test_nan_in_the_target_is_a_counted_fail_not_a_crash(deep_pair, deep_reference) -> None:
    def plant(lm: torch.nn.Module) -> None:
        lm.model.layers[2].self_attn.o_proj.weight[0, 0] = float("nan")

    runs = _deep_runs(deep_pair, deep_reference, plant, generate=True)
    logits = accuracy.logits_section(runs)
    verdicts = _verdicts(logits.checks)
    assert verdicts["logits: NaN/Inf values in the target"] is False
    assert verdicts["logits: msprobe whole-network rule"] is False
    assert logits.metrics["nonfinite"] > 0 and math.isnan(logits.metrics["kl"])
    layers = accuracy.layers_section(runs)
    assert layers.metrics["largest_increase_state"] == "layer 2"
    assert _verdicts(layers.checks)["layers: NaN/Inf values in the target's hidden states"] is False
    # generation and determinism are still computed (rows, not a failure), whatever the tokens
    gen, det = accuracy.generation_section(runs), accuracy.determinism_section(runs)
    assert not gen.failed and len(gen.table) == len(runs.prompts)
    assert set(gen.table["free_running"]) <= {f"{k}/{runs.plan.new_tokens}"
                                              for k in range(runs.plan.new_tokens + 1)}
    assert not det.failed and det.table["output"].iloc[0] == "logits (forward twice)"


def test_a_side_that_fails_to_load_is_a_failed_check(tmp_path: Path) -> None:
    cfg = RunConfig.from_params(model="gpa", model_dir=str(tmp_path / "missing"))
    p = accuracy.plan(target(cfg), new_tokens=2, languages="en")
    runs = accuracy.run_all(cfg, p)
    assert "load" in runs.target.errors and "load" in runs.reference.errors
    assert runs.golden is None and "did not load" in runs.golden_note
    for section in (accuracy.logits_section(runs), accuracy.layers_section(runs),
                    accuracy.generation_section(runs), accuracy.determinism_section(runs)):
        assert [c.passed for c in section.checks] == [False]
        assert "load" in section.checks[0].detail
    fig = accuracy.layer_figure(accuracy.layers_section(runs).table)
    assert fig is not None


def test_a_float64_reference_needs_no_separate_golden() -> None:
    cfg = RunConfig.from_params(model="gpa", dtype="float32")
    p = accuracy.plan(target(cfg), reference_dtype="float64", new_tokens=0, languages="en")
    runs = accuracy.run_all(cfg, p)
    assert runs.golden is None and "itself runs in float64" in runs.golden_note
    logits = accuracy.logits_section(runs)
    # float32 against float64: tiny but non-zero, and within the GPA report's thresholds
    assert 0 < logits.metrics["rel_l2_pct"] < 1e-3
    assert all(v is not False for v in _verdicts(logits.checks).values())


def test_notebook_declares_every_run_parameter_and_knob() -> None:
    declared = set(papermill.inspect_notebook(str(NOTEBOOK)))
    assert set(RunConfig.stage_fields()) <= declared
    assert {"run_dir", "reference_dtype", "golden", "new_tokens", "languages"} <= declared


# ---- identical weights on every side, reduced-precision float32 off ----------------------------


def test_every_side_holds_the_reference_weights(model_cache: Path) -> None:
    cfg = RunConfig.from_params(model="gpa", device="cpu")
    p = accuracy.plan(target(cfg), new_tokens=0, languages="en", golden="on")
    runs = accuracy.run_all(cfg, p)
    sec = accuracy.weights_section(runs)
    assert [c.passed for c in sec.checks] == [True, True], [c.detail for c in sec.checks]
    assert list(sec.table["side"]) == ["target", "golden"]
    assert (sec.table["identical"] == sec.table["tensors"]).all()


def test_full_shape_random_weights_do_not_depend_on_the_dtype(monkeypatch) -> None:
    # full-shape weights are random: made once on the CPU in float32 under the seed, then
    # cast, so a bfloat16 target and a float64 golden hold the reference's numbers
    from helpers import models
    from helpers.models import gpa, weights

    # the real widths; one layer and a short vocabulary (the embedding's init and cast are the
    # same at any length: at 180,445 rows the three copies were 5 s of random numbers)
    monkeypatch.setattr(gpa, "FULL", {**gpa.FULL, "num_hidden_layers": 1, "vocab_size": 8192})
    recipe = models.get("gpa")
    config = recipe.configs("full-shape")["lm"]
    lms = {dt: weights.materialize(weights.skeleton(recipe.loader("lm"), config, dt),
                                   {"": "cpu"}, seed=3)
           for dt in (torch.float32, torch.bfloat16, torch.float64)}
    ref = dict(lms[torch.float32].named_parameters())
    for dt in (torch.bfloat16, torch.float64):
        for name, param in lms[dt].named_parameters():
            assert param.dtype == dt and torch.equal(param, ref[name].to(dt)), (dt, name)
    assert lms[torch.float64].lm_head.weight is lms[torch.float64].model.embed_tokens.weight


def test_a_planted_weight_difference_fails_the_weights_check(model_cache: Path) -> None:
    cfg = RunConfig.from_params(model="gpa", device="cpu", dtype="float32")
    p = accuracy.plan(target(cfg), new_tokens=0, languages="en", golden="off")
    runs = accuracy.run_all(cfg, p)
    name = next(iter(runs.target.digests["float32"]))
    runs.target.digests["float32"][name] = "0" * 64  # as if one tensor were another
    (check,) = accuracy.weights_section(runs).checks
    assert check.passed is False and name in check.detail


def test_tf32_knob_is_recorded_and_checked() -> None:
    cfg = RunConfig.from_params(model="gpa")
    assert accuracy.plan(target(cfg)).as_dict()["tf32"] is False
    assert "off for every side" in accuracy.plan(target(cfg)).describe()
    with pytest.raises(ConfigError, match="tf32 must be True or False"):
        accuracy.plan(target(cfg), tf32="yes")


def test_pooled_top_k_from_each_prompts_own_equals_it_over_all_rows() -> None:
    """The logits section pools top-1 agreement and top-5 overlap from the per-prompt figures
    (counts over rows), not from a second pass: bit for bit the pass over all rows."""
    gen = torch.Generator().manual_seed(0)
    sizes = [3, 7, 1, 11]
    ref = [torch.randn(n, 40, generator=gen) for n in sizes]
    tgt = [r + 0.3 * torch.randn(r.shape, generator=gen) for r in ref]
    tgt[1][2] = ref[1][2]  # one row exactly equal, one far off
    tgt[2][0] = -ref[2][0]
    per = [parity.topk_agreement(t, r, 5) for t, r in zip(tgt, ref, strict=True)]
    want = parity.topk_agreement(torch.cat(tgt), torch.cat(ref), 5)
    assert accuracy.pooled_topk(per, sizes) == want
    assert 0.0 < want[0] < 1.0 and 0.0 < want[1] < 5.0  # neither figure trivially pooled
