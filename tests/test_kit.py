"""The stage kit: the target resolved once, sides, sections, the recorder and the one checks
table with its one verdict vocabulary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import tables
from helpers.config import RunConfig
from helpers.errors import DeviceError, ReportError
from helpers.records import VERDICTS, Check, read_result
from helpers.stages import kit


def test_target_resolves_device_dtype_and_backend_once() -> None:
    auto = kit.target(RunConfig.from_params(device="cpu"))
    assert auto.device == torch.device("cpu") and auto.dtype == torch.bfloat16  # cpu: auto
    assert auto.dtype_name == "bfloat16" and auto.label == "cpu bfloat16"
    assert auto.backend.name == "cpu" and auto.reason == "requested cpu"
    f32 = kit.target(RunConfig.from_params(device="cpu", dtype="float32", device_map="auto"))
    assert f32.side == kit.Side("target", torch.device("cpu"), torch.float32, "auto")
    assert f32.label == "cpu float32 (device_map auto)"


def test_target_refuses_a_device_that_is_not_here_with_what_to_do() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError) as err:
        kit.target(RunConfig.from_params(device="cuda"))
    assert isinstance(err.value, ReportError)
    assert "DEVICE=auto" in str(err.value)


def test_target_loads_the_recipe_in_eval_mode_with_its_dtype(model_cache: Path) -> None:
    tgt = kit.target(RunConfig.from_params(device="cpu", dtype="float32"))
    loaded = tgt.load()
    assert loaded.dtype == torch.float32 and loaded.device == tgt.device
    assert all(not m.training for m in loaded.components.values())
    assert {p.dtype for p in loaded.lm.parameters()} == {torch.float32}


def test_reference_side_is_the_cpu_in_float32() -> None:
    ref = kit.reference_side()
    assert (ref.role, ref.label, ref.backend.name) == ("reference", "cpu float32", "cpu")


def test_one_verdict_vocabulary() -> None:
    assert [VERDICTS.of(p) for p in (True, False, None)] == ["PASS", "FAIL", "info"]
    checks = [Check.judge("a", 1.0, "<", 2, "src"), Check.judge("b", 3, "<", 2, "src"),
              Check("c", None, "", None, "measured"), Check.judge("d", math.nan, "<", 2, "src")]
    frame = tables.checks_frame(checks)
    assert list(frame["verdict"]) == ["PASS", "FAIL", "info", "FAIL"]
    assert list(frame.columns) == tables.CHECK_COLUMNS
    assert list(frame["value"]) == ["1", "3", "-", "nan"]  # no Python reprs like None
    html = tables.checks_table(checks).to_html()
    assert "verdict-pass" in html and "verdict-fail" in html and "verdict-info" in html


def test_show_value_never_prints_a_python_repr() -> None:
    assert [tables.show_value(v) for v in (None, True, False, 312625152, 0.99997875, "x")] == \
        ["-", "yes", "no", "312,625,152", "0.999979", "x"]


def test_stage_records_sections_attempts_and_writes_verdicts(tmp_path: Path) -> None:
    st = kit.Stage("demo", str(tmp_path), "Demo")
    ok = kit.Section("good", checks=[Check.judge("x", 1, "==", 1, "src")], metrics={"m": 1},
                     notes=["n"])
    st.record(ok)

    def broken() -> kit.Section:
        raise ValueError("planted")

    failed = st.attempt("bad", broken)
    assert failed.failed and failed.checks[0].passed is False
    assert "ValueError: planted" in failed.checks[0].detail
    assert st.figure("never", lambda s: (None, None), failed) is None  # no figure of a failure
    st.record(kit.Section("flat", metrics={"top": 2}), flat=True)
    res = st.finish()
    assert res.status == "failed"
    back = read_result(tmp_path / "results" / "demo.json")
    assert back.metrics["good"] == {"m": 1, "notes": ["n"]} and back.metrics["top"] == 2
    raw = (tmp_path / "results" / "demo.json").read_text()
    assert '"verdict": "PASS"' in raw and '"verdict": "FAIL"' in raw


def test_a_notebook_alone_writes_to_the_lab_folder_and_its_manifest(tmp_path: Path,
                                                                  monkeypatch) -> None:
    monkeypatch.setenv(kit.LAB_ENV, str(tmp_path / "lab"))
    cfg = RunConfig.from_params()
    kit.Stage("one", "", cfg=cfg).finish()
    kit.Stage("two", "", cfg=cfg).finish()
    kit.Stage("one", "", cfg=cfg).finish()  # run again: listed once
    from helpers.records import read_json

    manifest = read_json(tmp_path / "lab" / "run.json")
    assert [s["name"] for s in manifest["stages"]] == ["one", "two"]
    assert manifest["config"]["model"] == "gpa"


def test_finish_records_the_stage_cost_of_each_timed_part(tmp_path):
    from helpers.stages.kit import Section, timed

    st = kit.Stage("environment", str(tmp_path), "Environment")
    st.attempt("first", lambda: Section("first"))
    with timed("a load"):
        sum(range(100_000))
    res = st.finish()
    parts = [p["part"] for p in res.profile["parts"]]
    assert parts == ["first", "a load"]
    assert all(p["wall_s"] >= 0 and p["cpu_s"] >= 0 for p in res.profile["parts"])
    assert res.profile["process_cpu_s"] >= res.profile["cpu_s"] >= 0
    written = json.loads((tmp_path / "results" / "environment.json").read_text())
    assert written["profile"]["parts"][1]["part"] == "a load"


def _drawn_twice(stage: kit.Stage, data: tuple) -> int:
    """How many times save_drawn drew `data` when asked twice."""
    from helpers import plots

    calls = []

    def draw(frame, title):  # noqa: ANN001, ANN202
        calls.append(title)
        fig, ax = plots.figure(width=3, height=2)
        ax.plot(frame["x"], frame["y"])
        ax.set_title(title)
        return fig

    paths = [stage.save_drawn("curve", draw, *data) for _ in range(2)]
    assert paths[0] == paths[1] and paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return len(calls)


def test_a_figure_is_drawn_once_for_equal_data_and_again_when_a_value_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    from helpers import players

    monkeypatch.setenv(players.FIGURE_CACHE_ENV, str(tmp_path / "figures"))
    stage = kit.Stage("demo", str(tmp_path / "run"))
    frame = pd.DataFrame({"x": [0, 1, 2], "y": [0.5, 0.25, 0.125]})
    assert _drawn_twice(stage, (frame, "a title")) == 1  # the second came from the cache
    assert stage.figures == ["demo-curve.png", "demo-curve.png"]
    changed = frame.assign(y=[0.5, 0.25, 0.126])
    assert _drawn_twice(stage, (changed, "a title")) == 1  # a value changed: drawn again
    assert _drawn_twice(stage, (frame.set_index(pd.Index([5, 6, 7])), "a title")) == 1
    assert _drawn_twice(stage, (frame, "another title")) == 1
    assert len(list((tmp_path / "figures").glob("*.png"))) == 4
    # a table cell no key can hold: drawn each time, nothing cached
    assert _drawn_twice(stage, (frame.assign(note=[[0], [1], [2]]), "a title")) == 2
    assert len(list((tmp_path / "figures").glob("*.png"))) == 4


def test_a_figure_key_holds_contents_never_an_objects_repr() -> None:
    import numpy as np

    what, arrays = kit.figure_key(([1, 2.5, "a"], {"k": None}, np.float32(1.5),
                                   torch.tensor([1.0, 2.0]), np.arange(3)))
    assert len(arrays) == 2 and arrays[0].tobytes() == torch.tensor([1.0, 2.0]).numpy().tobytes()
    # tensors keyed exactly: integers past float64's 2^53, bfloat16, the shape
    big = torch.tensor([2**53])  # 2^53 + 1 is 2^53 again in float64
    assert kit.figure_key((big,))[1][0].tobytes() != kit.figure_key((big + 1,))[1][0].tobytes()
    assert kit.figure_key((torch.ones(2, dtype=torch.bfloat16),))[0] != kit.figure_key(
        (torch.ones(2),))[0]
    assert kit.figure_key((torch.ones(2, 3),))[0] != kit.figure_key((torch.ones(3, 2),))[0]
    assert kit.figure_key((np.float32(1.5),))[0] != kit.figure_key((np.float64(1.5),))[0]
    for bad in (object(), np.array([object()], dtype=object), kit.Side):
        with pytest.raises(TypeError, match="cannot be keyed"):
            kit.figure_key((bad,))
