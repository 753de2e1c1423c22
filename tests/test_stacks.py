"""The supported stack: one tested range stated alike everywhere, a release older than it refused
before a run folder exists, the environment stage placing the running stack, and the
compatibility helpers working on whichever transformers is installed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from helpers import cli, compat, paths
from helpers.models import base, covo, gpa
from helpers.stages import environment

ROOT = paths.ROOT
LOW = {n: lo for n, (lo, _) in compat.TESTED.items()}
HIGH = {n: hi for n, (_, hi) in compat.TESTED.items()}


def test_the_range_is_stated_alike_in_pyproject_environment_yml_and_readme() -> None:
    text = compat.tested_text()  # python 3.11, torch 2.9.0 to ..., transformers ...
    for name in ("pyproject.toml", "environment.yml", "README.md"):
        assert text in " ".join((ROOT / name).read_text(encoding="utf-8").replace("#", " ")
                                .split()), name
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"torch>={LOW["torch"]}"' in pyproject
    assert f'"transformers>={LOW["transformers"]}"' in pyproject
    assert f'requires-python = ">={LOW["python"]}"' in pyproject
    conda = (ROOT / "environment.yml").read_text(encoding="utf-8")
    assert f"pytorch>={LOW['torch']}" in conda and f"transformers>={LOW['transformers']}" in conda
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")  # make test-stacks: the floor
    assert f"STACK_TORCH ?= torch=={LOW['torch']}" in makefile
    assert f"STACK_PIN ?= transformers=={LOW['transformers']}" in makefile
    assert f"python{LOW['python']}" in makefile


def test_placement_names_the_side_and_the_tested_end() -> None:
    assert compat.placement("torch", LOW["torch"] + "+cpu") == compat.INSIDE
    assert compat.placement("transformers", HIGH["transformers"]) == compat.INSIDE
    assert compat.placement("python", HIGH["python"] + ".9") == compat.INSIDE  # minor precision
    assert compat.placement("torch", "99.0.0") == \
        f"outside: torch 99.0.0 is newer than the newest tested ({HIGH['torch']})"
    assert compat.placement("transformers", "4.56.2") == \
        f"outside: transformers 4.56.2 is older than the oldest tested ({LOW['transformers']})"
    assert compat.release("2.9.0.post1+gitee7ba04") == (2, 9, 0)  # the release, no post


def test_an_older_release_is_refused_with_the_versions_that_work() -> None:
    old = {**HIGH, "torch": "2.1.0"}
    with pytest.raises(compat.StackError) as err:
        compat.check_stack(old)
    msg = str(err.value)
    assert "torch 2.1.0" in msg and compat.tested_text() in msg
    assert f"'torch>={LOW['torch']}'" in err.value.fix
    compat.check_stack({**HIGH, "torch": "99.0.0"})  # newer runs: the environment stage says so
    with pytest.raises(compat.StackError, match="transformers not installed"):
        compat.check_stack({**HIGH, "transformers": ""})


def test_the_cli_refuses_an_old_stack_before_a_run_folder_exists(tmp_path: Path, capsys,
                                                                  monkeypatch) -> None:
    monkeypatch.setattr(compat, "installed", lambda: {**HIGH, "transformers": "4.46.0"})
    out = tmp_path / "out"
    assert cli.main([f"OUT={out}", "STAGES=environment"]) == 2
    err = capsys.readouterr().err
    assert "transformers 4.46.0" in err and compat.tested_text() in err
    assert not out.exists()


def test_the_environment_stage_places_the_running_stack() -> None:
    rows = environment.tested_range(environment.package_versions())
    assert list(rows) == list(compat.TESTED)
    assert rows["torch"]["placement"] == compat.placement("torch", torch.__version__)
    newer = {**environment.package_versions(), "torch": "99.0.0"}
    env = {"device": {"dtype": "float32", "dtype_error": ""}, "versions": newer,
           "tested_range": environment.tested_range(newer), "git": {"dirty": False}}
    check = next(c for c in environment.checks(env) if "tested range" in c.name)
    assert check.value == "outside" and check.passed is None  # named, not failed
    assert f"torch 99.0.0 is newer than the newest tested ({HIGH['torch']})" in check.detail
    assert check.threshold == compat.tested_text()


def test_the_running_stack_is_inside_the_tested_range() -> None:
    # CI runs `make test` on the default stack and `make test-stacks` on the lowest one
    assert set(compat.stack_placement().values()) == {compat.INSIDE}


def test_compat_helpers_on_the_installed_transformers() -> None:
    import transformers

    tok = gpa.gpa_tokenizer()  # compat.add_special_tokens on the shipped tokenizer
    extra = tok.additional_special_tokens if hasattr(tok, "additional_special_tokens") \
        else tok.extra_special_tokens
    assert list(extra)[-len(gpa.MARKERS):] == list(gpa.MARKERS)  # appended, in order
    assert "<|im_start|>" in extra and gpa.TOKEN_LAYOUT["eos"] in extra  # the shipped ones kept
    assert len(covo.tiny_tokenizer()) == len(base.shipped_tokenizer()) + 3
    major = compat.release(transformers.__version__)[0]
    assert compat.init_module().__name__ == ("transformers.initialization" if major >= 5
                                             else "torch.nn.init")


def test_init_weights_keeps_loaded_tensors_and_computes_rotary_frequencies() -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    ref = Qwen3ForCausalLM(cfg)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(cfg)
    model.to_empty(device="cpu")  # garbage everywhere, as materialize and load_shards start
    loaded = model.model.embed_tokens.weight
    with torch.no_grad():
        loaded.copy_(torch.arange(loaded.numel(), dtype=loaded.dtype).view_as(loaded))
    loaded._is_hf_initialized = True
    compat.init_weights(model)
    assert torch.equal(loaded, torch.arange(loaded.numel(), dtype=loaded.dtype).view_as(loaded))
    assert torch.allclose(model.model.rotary_emb.inv_freq, ref.model.rotary_emb.inv_freq)
    assert torch.equal(model.model.norm.weight, torch.ones(32))  # the model's own init ran
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_a_tokenizer_folder_written_by_transformers_5_loads(tmp_path: Path) -> None:
    # transformers 5 lists its extra special tokens; 4.57 expected a dict of named ones
    folder = tmp_path / "tok"
    folder.mkdir()
    for f in paths.TOKENIZER.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    cfg = (folder / "tokenizer_config.json")
    text = cfg.read_text(encoding="utf-8")
    text = re.sub(r'"additional_special_tokens": \[[^\]]*\],\s*', "", text)
    cfg.write_text(text, encoding="utf-8")
    tok = compat.load_tokenizer(folder)
    assert tok.convert_tokens_to_ids("<|im_end|>") != tok.unk_token_id
    assert len(tok.tokenize("<|im_start|>hi<|im_end|>")) >= 2
    assert "<|im_end|>" in tok.all_special_tokens
