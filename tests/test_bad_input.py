"""Bad input and failed runs: refused before anything runs, nothing already produced is lost,
and the exit code says what happened (0 passed, 1 checks failed, 2 bad input or a raise)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch

from helpers import paths
from helpers.cli import main
from helpers.config import ConfigError, RunConfig
from helpers.models.base import shipped_tokenizer
from helpers.records import read_json
from helpers.runner import rundir
from helpers.runner.pipeline import exit_code, run_pipeline

PY = sys.executable


def _notebook(folder: Path, name: str, body: str) -> Path:
    """A stage notebook: a parameters cell (run_dir) and one code cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell('run_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    nbformat.write(nb, path)
    return path


STAGE = """
from helpers.records import Check
from helpers.stages.kit import Section, Stage
st = Stage({name!r}, run_dir)
{extra}
st.record(Section("checks", checks=[Check.judge("planted", {value}, "==", 1, "test")]))
st.finish()
"""
FIGURE = """
import matplotlib.pyplot as plt
fig = plt.figure(); st.save_figure(fig, {label!r})
"""


def _stage(folder: Path, number: int, name: str, value: int = 1, extra: str = "") -> Path:
    return _notebook(folder, f"{number:02d}_{name}.ipynb",
                     STAGE.format(name=name, value=value, extra=extra))


def _runs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and not p.is_symlink()) \
        if out.exists() else []


# ---- 1. a folder of another architecture ----------------------------------------------------


def _gpt2_folder(root: Path, pad: bool = True) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = shipped_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32,
                                       n_layer=2, n_head=2, eos_token_id=tok.eos_token_id))
    model.save_pretrained(str(root))
    tok.save_pretrained(str(root))
    if not pad:  # a tokenizer without a pad token, as GPT-2's and Llama's ship
        cfg_path = root / "tokenizer_config.json"
        data = json.loads(cfg_path.read_text())
        data.pop("pad_token", None)
        cfg_path.write_text(json.dumps(data))
        for extra in ("special_tokens_map.json",):
            p = root / extra
            if p.exists():
                d = json.loads(p.read_text())
                d.pop("pad_token", None)
                p.write_text(json.dumps(d))
    return root


def test_a_folder_of_another_architecture_is_refused_before_any_stage(tmp_path, capsys):
    folder = _gpt2_folder(tmp_path / "gpt2")
    out = tmp_path / "out"
    assert main(["MODEL=gpa", f"MODEL_DIR={folder}", f"OUT={out}"]) == 2
    err = capsys.readouterr().err
    assert "qwen3" in err and "'gpt2'" in err and "GPT2LMHeadModel" in err
    assert _runs(out) == []


# ---- 2. tokenizers without a pad token --------------------------------------------------


def test_hf_recipe_with_a_tokenizer_without_pad_token_generates(tmp_path):
    from helpers.stages import accuracy_parity as accuracy
    from helpers.stages.kit import target

    folder = _gpt2_folder(tmp_path / "gpt2", pad=False)
    before = (folder / "tokenizer_config.json").read_bytes()
    cfg = RunConfig.from_params(model="hf", model_dir=str(folder), dtype="float32")
    runs = accuracy.run_all(cfg, accuracy.plan(target(cfg), new_tokens=3, languages="en,zh"))
    assert runs.target.errors == {} and runs.reference.errors == {}
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(folder)).pad_token_id is None
    gen, det = accuracy.generation_section(runs), accuracy.determinism_section(runs)
    assert not gen.failed and not det.failed
    assert runs.target.tokens.shape == (len(runs.prompts), 3)
    assert (folder / "tokenizer_config.json").read_bytes() == before  # the user's file


# ---- 3. a device that is not here ---------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_a_missing_device_is_one_message_and_exit_2(tmp_path, capsys, device):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    assert main([f"DEVICE={device}", f"OUT={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "CUDA" in err and "DEVICE=auto" in err
    assert not out.exists() or _runs(out) == []


# ---- 4. an unusable OUT ---------------------------------------------------------------------


def test_out_that_is_a_file_or_under_one_is_refused(tmp_path, capsys):
    file = tmp_path / "a-file"
    file.write_text("x")
    assert main([f"OUT={file}"]) == 2
    err = capsys.readouterr().err
    assert f"OUT={file} is a file" in err and "point OUT at a folder" in err
    assert main([f"OUT={file / 'sub'}"]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_an_audio_dir_that_is_not_a_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([f"AUDIO_DIR={tmp_path / 'no-such-clips'}", f"OUT={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "is not a folder" in err and ".wav / .flac" in err
    assert not out.exists() or _runs(out) == []


def test_audio_dir_reaches_the_tasks_notebook_only(tmp_path):
    from helpers.runner.pipeline import _notebook_params

    cfg = RunConfig.from_params(audio_dir=str(tmp_path))
    tasks = _notebook_params(paths.NOTEBOOKS / "06_tasks.ipynb", cfg, tmp_path)
    other = _notebook_params(paths.NOTEBOOKS / "04_accuracy_parity.ipynb", cfg, tmp_path)
    assert tasks["audio_dir"] == str(tmp_path) and "audio_dir" not in other


# ---- 5. a failed run does not take over; an interrupted one says so ---------------------------


def test_a_run_where_every_stage_raised_leaves_latest_and_figures_alone(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    _stage(good, 1, "drawn", extra=FIGURE.format(label="plot"))
    _notebook(bad, "01_broken.ipynb", 'raise RuntimeError("planted")')
    out, figures = tmp_path / "out", tmp_path / "figures"
    cfg = RunConfig.from_params(out=str(out))
    first = run_pipeline(cfg, notebooks_dir=good, figures_dir=figures, pdf=False)
    assert first.exit_code == 0
    latest = (out / "latest").resolve()
    shown = sorted(p.name for p in figures.glob("*.png"))
    assert shown == ["drawn-plot.png"]
    second = run_pipeline(cfg, notebooks_dir=bad, figures_dir=figures, pdf=False)
    assert second.exit_code == 2 and second.html.is_file()  # still reported
    assert (out / "latest").resolve() == latest  # not taken over
    assert sorted(p.name for p in figures.glob("*.png")) == shown


def test_an_interrupted_run_is_marked_and_can_be_pruned(tmp_path):
    nbs, out = tmp_path / "nbs", tmp_path / "out"
    started = tmp_path / "cell-started"
    _notebook(nbs, "01_slow.ipynb",
              f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(60)")
    # a shell's background job inherits SIGINT ignored: the run restores Python's default first
    code = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "import sys; from pathlib import Path; from helpers.config import RunConfig; "
            "from helpers.runner.pipeline import run_pipeline; "
            f"run_pipeline(RunConfig.from_params(out={str(out)!r}), "
            f"notebooks_dir=Path({str(nbs)!r}), figures_dir=None, pdf=False)")
    proc = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and not started.exists():  # its kernel runs the cell
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode != 0
    (folder,) = _runs(out)
    assert folder.name.endswith(rundir.INTERRUPTED), text
    assert read_json(folder / "run.json")["status"] == "interrupted"
    assert not (out / "latest").exists()
    assert rundir.prune(out) == [folder] and _runs(out) == []


# ---- 6. exit codes ----------------------------------------------------------------------------


def test_exit_codes_follow_the_test_runner_convention(tmp_path):
    ok, failing = tmp_path / "ok", tmp_path / "failing"
    _stage(ok, 1, "fine")
    _stage(failing, 1, "off", value=0)
    out = str(tmp_path / "out")
    assert run_pipeline(RunConfig.from_params(out=out), notebooks_dir=ok, figures_dir=None,
                        pdf=False).exit_code == 0
    res = run_pipeline(RunConfig.from_params(out=out), notebooks_dir=failing, figures_dir=None,
                       pdf=False)
    assert res.exit_code == 1 and res.html.is_file()
    assert read_json(res.run_dir / "run.json")["exit_code"] == 1
    assert exit_code([], ["off"], None, strict=False) == 0  # STRICT=0: known failures
    assert exit_code(["x"], [], None, strict=True) == 2
    assert exit_code([], [], {"type": "E"}, strict=True) == 2
    assert exit_code([], [], None, strict=True) == 0


# ---- 7. two runs at once ----------------------------------------------------------------------


def test_two_runs_into_one_out_at_once_keep_apart(tmp_path):
    nbs, out = tmp_path / "nbs", tmp_path / "out"
    _stage(nbs, 1, "pause", extra="import time; time.sleep(1)")
    code = ("from pathlib import Path; from helpers.config import RunConfig; "
            "from helpers.runner.pipeline import run_pipeline; "
            f"r = run_pipeline(RunConfig.from_params(out={str(out)!r}), "
            f"notebooks_dir=Path({str(nbs)!r}), figures_dir=None, pdf=False); "
            "raise SystemExit(r.exit_code)")
    env = {**os.environ, "HELPERS_MODEL_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([PY, "-c", code], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    runs = _runs(out)
    assert len(runs) == 2
    manifests = [read_json(r / "run.json") for r in runs]
    assert all(m["status"] == "finished" for m in manifests)
    for r in runs:  # each run holds its own stage's result and report, untouched
        assert (r / "results" / "pause.json").is_file() and (r / "adaptation-report.html").is_file()
    last = max(runs, key=lambda r: read_json(r / "run.json")["ended_unix"])
    assert (out / "latest").resolve() == last.resolve()


def test_config_errors_keep_their_fix() -> None:
    with pytest.raises(ConfigError) as err:
        rundir.check_out(paths.ROOT / "pyproject.toml")
    assert err.value.fix and "OUT" in err.value.message


def test_the_tasks_stage_skips_a_recipe_without_speech_tasks(tmp_path):
    """MODEL=hf (any causal LM) has no speech tasks: stage 6 is skipped with the reason, not
    a raised stage (which would exit 2 for every hf report)."""
    folder = _gpt2_folder(tmp_path / "gpt2", pad=False)
    cfg = RunConfig.from_strings({"MODEL": "hf", "MODEL_DIR": str(folder), "DTYPE": "float32",
                                  "DEVICE": "cpu", "STAGES": "tasks", "OUT": str(tmp_path)})
    run = run_pipeline(cfg, figures_dir=None, pdf=False)
    assert run.exit_code == 0 and run.results["tasks"].status == "skipped"
    res = read_json(run.run_dir / "results" / "tasks.json")
    assert res["status"] == "skipped" and res["checks"] == []
    assert "has no speech tasks" in res["metrics"]["skipped_reason"]
