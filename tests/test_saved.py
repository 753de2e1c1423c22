"""Saved outputs (helpers.saved): real tiny stage 4 and 6 sides saved and read back bit for
bit, a half-written folder refused, and the reference cache: a hit gives the same verdicts, a
changed weight, input or setting misses, REFERENCE= is checked, a target is never cached."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import audio, outputs, saved
from helpers.config import RunConfig
from helpers.errors import ConfigError
from helpers.stages import accuracy_parity as accuracy
from helpers.stages import tasks
from helpers.stages.kit import target

SMALL = {"new_tokens": 2, "languages": "en", "fixtures": "en_fox"}  # a short stage 4 workload


def _plan(cfg: RunConfig, **knobs: object) -> accuracy.Plan:
    return accuracy.plan(target(cfg), **{**SMALL, **knobs})


def _verdicts(runs: accuracy.Runs) -> list[tuple[str, object, bool | None]]:
    sections = [accuracy.weights_section(runs), accuracy.logits_section(runs),
                accuracy.layers_section(runs), accuracy.golden_section(runs),
                accuracy.generation_section(runs)]
    return [(c.name, c.value, c.passed) for s in sections for c in s.checks]


@pytest.fixture(scope="module")
def parity_runs(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Stage 4's sides on the tiny GPA model twice into two run folders: computed (and cached),
    then reused from the cache, with the seconds each took."""
    cfg = RunConfig.from_params(model="gpa")
    out = {}
    for name in ("computed", "reused"):
        run_dir = tmp_path_factory.mktemp(name)
        store = accuracy.stage_store(cfg, _plan(cfg), run_dir)
        t0 = time.perf_counter()
        runs = accuracy.run_all(cfg, _plan(cfg), store)
        out[name] = {"runs": runs, "store": store, "dir": run_dir,
                     "seconds": time.perf_counter() - t0}
    return out


# ---- the files -----------------------------------------------------------------------------

def test_every_stage_4_side_reads_back_bit_for_bit(parity_runs: dict) -> None:
    runs, run_dir = parity_runs["computed"]["runs"], parity_runs["computed"]["dir"]
    got = saved.open_run(run_dir)
    assert {"reference", "target", "golden", "baseline"} == set(got.roles(saved.PARITY))
    for side in runs.sides:
        back = saved.side_run(got, side.side.role)
        assert back.side == side.side
        mine, theirs = saved.side_tensors(side), saved.side_tensors(back)
        assert list(mine) == list(theirs) and len(mine) > 10
        for key, t in mine.items():
            assert theirs[key].dtype == t.dtype and torch.equal(theirs[key], t), key
        for name in saved.SIDE_FIELDS:
            assert getattr(back, name) == getattr(side, name), name
    # a bfloat16 side's float32 copies are stored in bfloat16 (lossless), the others as held
    stored = {(e.role, e.key): e.stored for e in got.entries(saved.PARITY)}
    assert stored["target", "logits/0"] == "bfloat16"
    assert stored["reference", "logits/0"] == "float32"
    assert stored["golden", "logits/0"] == "float64"


def test_the_index_holds_the_hashes_and_one_entry_per_tensor(parity_runs: dict) -> None:
    got = saved.open_run(parity_runs["computed"]["dir"])
    assert set(got.hashes) == {"weights", "inputs", "settings"}
    assert got.input_hashes["fixture:en_fox"] == saved.file_digest(
        audio.fixture("en_fox").path)
    assert sum(k.startswith("prompt:en:") for k in got.input_hashes) == 8
    assert got.settings(saved.PARITY)["new_tokens"] == 2
    e = next(e for e in got.entries() if e.role == "target" and e.key == "tokens")
    assert e.shape == (8, 2) and e.dtype == "int64" and e.bytes == 8 * 2 * 8
    # the weights hash does not depend on the target's dtype: the reference's float32 copy
    ref = parity_runs["computed"]["runs"].reference
    assert got.hashes["weights"] == saved.weights_hash(ref.digests) != ""


def test_a_half_written_folder_is_a_clear_error(parity_runs: dict, tmp_path: Path) -> None:
    import shutil

    folder = shutil.copytree(parity_runs["computed"]["dir"] / saved.OUTPUTS, tmp_path / "outputs")
    with pytest.raises(ConfigError, match="nowhere-made is not a folder; give a run folder"):
        saved.open_run(tmp_path / "nowhere-made")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="is not a complete saved run: no index.json"):
        saved.open_run(tmp_path / "empty")
    (folder / "accuracy_parity-golden.safetensors").unlink()  # interrupted after the index
    with pytest.raises(ConfigError, match="accuracy_parity-golden.safetensors is missing or "
                                          "differs.*run `make report` again"):
        saved.open_run(tmp_path)
    (folder / saved.INDEX).unlink()  # interrupted before the index
    with pytest.raises(ConfigError, match=f"{tmp_path / 'outputs'} is not a complete saved run"):
        saved.open_run(tmp_path)


def test_a_changed_byte_is_refused(parity_runs: dict, tmp_path: Path) -> None:
    import shutil

    folder = shutil.copytree(parity_runs["computed"]["dir"] / saved.OUTPUTS, tmp_path / "outputs")
    path = folder / "accuracy_parity-target.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ConfigError, match="accuracy_parity-target.safetensors is missing or differs"):
        saved.open_run(tmp_path)


# ---- the reference cache ------------------------------------------------------------------

def test_a_reused_reference_gives_the_same_verdicts_faster(parity_runs: dict) -> None:
    computed, reused = parity_runs["computed"], parity_runs["reused"]
    assert computed["store"].source is None and reused["store"].source is not None
    assert reused["store"].note.startswith(f"reference reused from {computed['store'].cache} "
                                           "(computed 20")
    assert reused["store"].metric()["reused"] is True
    assert _verdicts(reused["runs"]) == _verdicts(computed["runs"])
    assert reused["seconds"] < computed["seconds"]  # the three CPU sides are not run again
    # the reused sides are saved with the run, so it can serve as REFERENCE= itself
    assert set(saved.open_run(reused["dir"]).roles(saved.PARITY)) == {
        "reference", "target", "golden", "baseline"}


def test_a_golden_that_did_not_fit_joins_the_cache_when_computed(monkeypatch, tmp_path: Path,
                                                                   model_cache: Path) -> None:
    """golden auto: a first run where float64 did not fit caches no golden; the next run
    reuses the reference, computes the golden and adds it to the cache entry; a third run
    reuses all three CPU sides."""
    from helpers.stages.accuracy_parity import sides

    cfg = RunConfig.from_params(model="gpa")
    decide = sides.golden_decision
    monkeypatch.setattr(sides, "golden_decision", lambda mode, n: (False, "no room (planted)"))
    monkeypatch.setenv(outputs.CACHE_ENV, str(tmp_path / "cache"))
    runs = []
    for i in range(3):
        store = accuracy.stage_store(cfg, _plan(cfg), tmp_path / f"run{i}")
        runs.append((store, accuracy.run_all(cfg, _plan(cfg), store)))
        monkeypatch.setattr(sides, "golden_decision", decide)  # room from the second on
    (first, r1), (second, r2), (third, r3) = runs
    assert first.source is None and r1.golden is None
    assert second.source is not None and second.reused("golden") is None and r2.golden
    assert set(saved.open_run(first.cache).roles(saved.PARITY)) == {
        "reference", "golden", "baseline"}
    assert third.reused("golden") is not None and r3.golden_note.endswith("reused with the reference")


@pytest.mark.parametrize(("change", "part"), [
    ({"seed": 1}, "weights source"),  # other random weights
    ({"knobs": {"languages": "zh"}}, "inputs"),
    ({"knobs": {"fixtures": "zh_weather"}}, "inputs"),
    ({"knobs": {"new_tokens": 3}}, "settings"),
    ({"knobs": {"golden": "off"}}, "settings"),
    ({"dtype": "float16"}, "settings"),  # the baseline side is the CPU in the target's dtype
])
def test_a_changed_weight_input_or_setting_misses(parity_runs: dict, tmp_path: Path,
                                                  change: dict, part: str) -> None:
    knobs = change.pop("knobs", {})
    cfg = RunConfig.from_params(model="gpa", **change)
    store = accuracy.stage_store(cfg, _plan(cfg, **knobs), tmp_path)
    assert store.source is None and "no reference cached" in store.note
    assert store.cache != parity_runs["computed"]["store"].cache
    named = RunConfig.from_params(model="gpa", reference=str(parity_runs["computed"]["dir"]),
                                  **change)
    with pytest.raises(ConfigError, match=f"made from other {part} "):
        accuracy.stage_store(named, _plan(named, **knobs), tmp_path)


def test_a_changed_file_of_model_dir_changes_the_weights_source(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"one")
    cfg = RunConfig.from_params(model="gpa", model_dir=str(tmp_path))
    before = outputs.weights_source(cfg)
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))
    assert outputs.weights_source(cfg) != before


def test_other_weights_behind_a_matching_key_are_computed_again(parity_runs: dict) -> None:
    runs = parity_runs["computed"]["runs"]
    assert accuracy.sides._same_weights(runs)
    ref = dataclasses.replace(runs.reference, digests={
        k: {**v, next(iter(v)): "0" * 64} for k, v in runs.reference.digests.items()})
    assert not accuracy.sides._same_weights(dataclasses.replace(runs, reference=ref))


def test_reference_named_and_fresh(parity_runs: dict, tmp_path: Path) -> None:
    first = parity_runs["computed"]
    cfg = RunConfig.from_params(model="gpa", reference=str(first["dir"]))
    named = accuracy.stage_store(cfg, _plan(cfg), tmp_path)
    assert named.source is not None and named.cache is None
    assert f"REFERENCE={first['dir']}" in named.note
    fresh = accuracy.stage_store(dataclasses.replace(cfg, reference=outputs.FRESH), _plan(cfg),
                                 tmp_path)
    assert fresh.source is None and fresh.cache == first["store"].cache
    with pytest.raises(ConfigError, match="holds no reference side of stage tasks"):
        outputs.store(saved.TASKS, (tasks.pack, tasks.task_side), tmp_path, cfg, {}, {})


def test_the_cache_never_holds_a_target(parity_runs: dict, tmp_path: Path) -> None:
    runs = parity_runs["computed"]["runs"]
    store = dataclasses.replace(parity_runs["computed"]["store"], source=None,
                                cache=tmp_path / "cache")
    with pytest.raises(ValueError, match="never the target"):
        store.fill_cache([runs.reference, runs.target])
    assert not (tmp_path / "cache").exists()


def test_a_fault_run_caches_the_clean_reference(parity_runs: dict, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(outputs.CACHE_ENV, str(tmp_path / "cache"))
    cfg = RunConfig.from_params(model="gpa", fault="layer_mlp_1pct")
    p = _plan(cfg, golden="off", new_tokens=1)
    store = accuracy.stage_store(cfg, p, tmp_path / "run")
    faulty = accuracy.run_all(cfg, p, store)
    cached = saved.side_run(saved.open_run(store.cache), "reference")
    clean = parity_runs["computed"]["runs"].reference
    assert set(saved.open_run(store.cache).roles(saved.PARITY)) == {"reference", "baseline"}
    assert all(torch.equal(a, b) for a, b in zip(cached.logits, clean.logits, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(faulty.target.logits,
                                                     parity_runs["computed"]["runs"].target.logits,
                                                     strict=True))


# ---- stage 6 ---------------------------------------------------------------------------------

def test_task_sides_read_back_and_are_reused(parity_runs: dict, tmp_path: Path) -> None:
    cfg = RunConfig.from_params(model="gpa")
    tgt = target(cfg)
    done = []
    for name in ("computed", "reused"):
        s = tasks.settings(cfg, max_new_tokens=3)
        runs = tasks.run_all(tgt, "", "en_fox", s, str(tmp_path / name))
        done.append((runs, tasks.compare(runs)))
    (first, frame), (second, again) = done
    assert first.store.source is None and second.store.source is not None
    assert second.settings.notes[0].startswith("The reference reused from")
    cols = ["task", "input", "agreement %", "stable top-1 %", "prompt agreement %"]
    assert frame[cols].equals(again[cols])
    got = saved.open_run(tmp_path / "computed")
    # the same weights hash as stage 4's, from the reference's float32 weights
    assert got.hashes["weights"] == saved.open_run(parity_runs["computed"]["dir"]).hashes["weights"]
    for role, side in (("target", first.target), ("reference", first.reference)):
        back = saved.task_side(got, role)
        assert list(back.outputs) == list(side.outputs)
        for key, out in side.outputs.items():
            b = back.outputs[key]
            assert json.dumps(b.record(), sort_keys=True) == json.dumps(out.record(),
                                                                         sort_keys=True)
            assert (b.tokens, b.prompt, b.semantic) == (out.tokens, out.prompt, out.semantic)
            assert (b.wave is None) == (out.wave is None)
            assert out.wave is None or np.array_equal(b.wave, out.wave)
            assert (b.steps is None) == (out.steps is None)
            assert out.steps is None or torch.equal(b.steps, out.steps)


# ---- BASELINE= -------------------------------------------------------------------------------

def _baseline_copy(parity_runs: dict, tmp_path: Path, edit: dict[str, str]) -> Path:
    """A copy of the computed run whose index says some inputs held other content."""
    import shutil

    folder = shutil.copytree(parity_runs["computed"]["dir"] / saved.OUTPUTS, tmp_path / "outputs")
    index = json.loads((folder / saved.INDEX).read_text())
    index["stages"][saved.PARITY]["inputs"].update(edit)
    (folder / saved.INDEX).write_text(json.dumps(index))
    return tmp_path


def test_baseline_run_is_compared_by_the_same_rules(parity_runs: dict) -> None:
    mine = parity_runs["reused"]
    sec = accuracy.baseline_section(mine["runs"], mine["store"], str(parity_runs["computed"]["dir"]))
    judged = [c for c in sec.checks if c.passed is not None]
    assert all(c.name.startswith("baseline run: ") for c in sec.checks) and len(judged) > 10
    assert all(c.passed for c in judged)  # the same CPU bfloat16 target twice
    assert sec.metrics["logits"]["rel_l2_pct"] == 0.0
    assert "Both runs ran the same 9 inputs." in sec.notes


def test_baseline_partly_other_inputs_compares_what_they_share(parity_runs: dict,
                                                               tmp_path: Path) -> None:
    folder = _baseline_copy(parity_runs, tmp_path, {"prompt:en:7": "0" * 64})
    mine = parity_runs["reused"]
    sec = accuracy.baseline_section(mine["runs"], mine["store"], str(folder))
    assert sec.metrics["logits"]["prompts"] == 7
    assert ("Compared on the 8 inputs both runs share; left out: prompt:en:7 (other content), "
            "none (this run only), none (the baseline only).") in sec.notes


def test_baseline_of_other_weights_or_inputs_is_refused(parity_runs: dict, tmp_path: Path) -> None:
    mine = parity_runs["reused"]
    other = dataclasses.replace(mine["store"], weights="f" * 64)
    with pytest.raises(ConfigError, match="ran other weights: weights hash .* here"):
        accuracy.baseline_section(mine["runs"], other, str(parity_runs["computed"]["dir"]))
    folder = _baseline_copy(parity_runs, tmp_path, {f"prompt:en:{i}": "0" * 64 for i in range(8)})
    with pytest.raises(ConfigError, match="shares no prompt with this run: inputs hash"):
        accuracy.baseline_section(mine["runs"], mine["store"], str(folder))
    assert accuracy.baseline_section(mine["runs"], mine["store"], "").checks == []


def test_reused_sides_are_linked_not_copied(parity_runs: dict) -> None:
    reused = parity_runs["reused"]
    for role in ("reference", "golden", "baseline"):
        name = f"{saved.PARITY}-{role}.safetensors"
        mine = reused["dir"] / saved.OUTPUTS / name
        assert mine.stat().st_ino == (reused["store"].source.folder / name).stat().st_ino
    target = reused["dir"] / saved.OUTPUTS / f"{saved.PARITY}-target.safetensors"
    assert target.stat().st_nlink == 1  # the target is this run's own


def test_the_stage_run_again_into_its_own_folder_links_again(parity_runs: dict) -> None:
    """A stage rerun into the same folder (a notebook run twice in one lab kernel): the reused
    sides are linked once more, no temporary link is left behind."""
    reused = parity_runs["reused"]
    cfg = RunConfig.from_params(model="gpa")
    store = accuracy.stage_store(cfg, _plan(cfg), reused["dir"])
    assert accuracy.run_all(cfg, _plan(cfg), store).reference.tokens is not None
    assert not list((reused["dir"] / saved.OUTPUTS).glob(".*.link-*"))


def test_baseline_and_reference_are_run_parameters_made_absolute(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 ) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig.from_strings({"BASELINE": "runs/a", "REFERENCE": "fresh"}).absolute()
    assert (cfg.baseline, cfg.reference) == (str(tmp_path / "runs" / "a"), "fresh")
    assert "BASELINE" in RunConfig.help() and "REFERENCE" in RunConfig.help()
