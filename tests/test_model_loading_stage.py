"""Stage 2: its results record from a report run of that stage alone (a kernel forked from the
run's fork server, as in every report), and a bad MODEL_DIR in the notebook run on its own
with papermill."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import models, paths
from helpers.config import RunConfig
from helpers.records import read_result
from helpers.runner.pipeline import run_pipeline

NOTEBOOK = paths.NOTEBOOKS / "02_model_loading.ipynb"


def _execute(tmp_path: Path, **params: object) -> Path:
    import papermill

    run_dir = tmp_path / "run"
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "out.ipynb"), parameters={"run_dir": str(run_dir), **params},
        kernel_name="python3", cwd=str(paths.NOTEBOOKS), progress_bar=False,
    )
    return run_dir


def test_stage_records_covo_load_with_device_map(tmp_path: Path, model_cache: Path) -> None:
    # the kernel inherits the session's model cache (tests/conftest.py): one tiny Covo build
    cfg = RunConfig.from_strings({"MODEL": "covo-audio-chat", "DEVICE": "cpu", "DTYPE": "float32",
                                  "DEVICE_MAP": "auto", "STAGES": "model_loading",
                                  "OUT": str(tmp_path)})
    run = run_pipeline(cfg, figures_dir=None, pdf=False)
    run_dir = run.run_dir
    assert run.exit_code == 0, run.results["model_loading"].error
    res = read_result(run_dir / "results" / "model_loading.json")
    assert res.status == "passed" and res.title == "Model loading"
    m = res.metrics
    tiny = sum(r["parameters"] for r in models.get("covo-audio-chat").describe("tiny"))
    assert m["parameters_total"] == tiny == sum(m["parameters"].values())
    assert set(m["parameters"]) == {"audio_encoder", "adapter", "lm", "vocoder"}
    assert m["profile"] == "tiny" and m["dtype"] == "float32" and m["device_map"] == "auto"
    assert set(m["placement"].values()) == {"cpu"}
    assert any("placed every module on cpu" in n for n in m["notes"])
    assert m["load_seconds"] > 0
    assert m["memory_host_rss"] > 0 and m["memory_allocated"] is None  # cpu: no device allocator
    names = {c.name: c for c in res.checks}
    assert names["parameter count matches the recipe's shape"].passed
    assert names["full-shape audio_encoder+adapter+lm parameters match the published "
                 "8,402,417,920"].value == 8_402_417_920
    assert all(c.passed for c in res.checks), [c for c in res.checks if not c.passed]
    assert res.figures == ["model_loading-components.png"]
    assert (run_dir / "figures" / "model_loading-components.png").stat().st_size > 10_000


def test_stage_fails_clearly_on_a_missing_model_dir(tmp_path: Path) -> None:
    from papermill.exceptions import PapermillExecutionError

    missing = tmp_path / "no-such-model"
    with pytest.raises(PapermillExecutionError) as err:
        _execute(tmp_path, model="gpa", model_dir=str(missing), device="cpu")
    assert err.value.ename == "ModelLoadError"
    assert f"{missing} does not exist" in err.value.evalue
