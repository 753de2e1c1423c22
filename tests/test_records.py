import json
import math

import pytest

from helpers.records import Check, StageResult, read_result, read_results, write_result
from helpers.stages.kit import Section, Stage


def test_stage_result_round_trip(tmp_path):
    res = StageResult(
        stage="accuracy", status="failed", seconds=1.25, title="Accuracy",
        metrics={"cosine": 0.999, "nested": {"a": [1, 2]}, "nan": float("nan")},
        checks=[Check.judge("cosine", 0.999, ">", 0.99, "gpa-report"),
                Check.judge("rel l2 %", 2.0, "<", 1.0, "gpa-report", unit="%"),
                Check("info row", "x", "-", None, "measured")],
    )
    path = write_result(tmp_path, res)
    assert path.name == "accuracy.json"
    back = read_result(path)
    assert back.checks == res.checks
    assert back.metrics["nested"] == {"a": [1, 2]} and math.isnan(back.metrics["nan"])
    assert (back.stage, back.status, back.seconds) == ("accuracy", "failed", 1.25)
    raw = json.loads(path.read_text())
    assert set(raw["checks"][0]) >= {"name", "value", "threshold", "passed", "source"}
    assert read_results(tmp_path)["accuracy"].title == "Accuracy"


def test_judge_never_passes_nan_or_none():
    assert Check.judge("x", float("nan"), "<", 1, "s").passed is False
    assert Check.judge("x", None, ">", 1, "s").passed is False
    assert Check.judge("x", 0.5, "<=", 0.5, "s").passed is True
    assert Check.judge("x", 2, "<", 1, "s", unit=" s").threshold == "< 1 s"
    with pytest.raises(ValueError, match="unknown comparison"):
        Check.judge("x", 1, "~", 1, "s")


def test_bad_status_and_missing_fields_are_rejected():
    with pytest.raises(ValueError, match="status"):
        StageResult(stage="s", status="ok", seconds=0)
    with pytest.raises(ValueError, match="lacks"):
        StageResult.from_dict({"stage": "s"})


def test_stage_recorder_status_follows_checks(tmp_path):
    st = Stage("probe", str(tmp_path))
    st.metric("n", 3)
    st.record(Section("checks", checks=[Check.judge("n small", 3, "<", 5, "test")]))
    assert st.finish().status == "passed"
    st2 = Stage("probe2", str(tmp_path))
    st2.record(Section("checks", checks=[Check.judge("n small", 9, "<", 5, "test")]))
    assert st2.finish().status == "failed"
    st3 = Stage("probe3", str(tmp_path))
    st3.skip("not applicable")
    st3.finish()
    assert read_result(tmp_path / "results" / "probe3.json").status == "skipped"
