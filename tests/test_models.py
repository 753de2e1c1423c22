"""Model recipes: tiny forwards, full-shape counts on meta, the tiny cache, bad model folders, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
import transformers

from helpers import compat, models, paths
from helpers.config import RunConfig
from helpers.models import cache
from helpers.models import gpa as gpa_module
from helpers.models.base import TOKENIZER_DIR, shipped_tokenizer, total_row
from helpers.models.covo_model import CovoAudioForCausalLM
from helpers.models.gpa import GpaRecipe
from helpers.models.weights import ModelLoadError

CPU = torch.device("cpu")
F32 = torch.float32


def _cfg(model: str, **kw: object) -> RunConfig:
    return RunConfig.from_params(model=model, device="cpu", dtype="float32", **kw)


@pytest.fixture(scope="module")
def gpa_tiny(model_cache: Path):
    return models.get("gpa").load(CPU, F32, **_cfg("gpa").recipe_args())


@pytest.fixture(scope="module")
def covo_tiny(model_cache: Path):
    return models.get("covo-audio-chat").load(CPU, F32, **_cfg("covo-audio-chat").recipe_args())


def _first(out: object) -> torch.Tensor:
    """The main tensor of a component's output: a tensor, logits or last_hidden_state (the
    audio components: a codec's audio_values, a speech tokenizer's pooled states; gpa's
    release-format components return dicts: BiCodec's waveform, GLM-4-Voice's states)."""
    if torch.is_tensor(out):
        return out
    if isinstance(out, dict) and ("waveform" in out or "states" in out):
        return out.get("waveform", out.get("states"))
    for key in ("logits", "last_hidden_state", "audio_values", "pooled"):
        value = getattr(out, key, None)
        if value is not None:
            return value
    raise AssertionError(f"no main tensor in {type(out).__name__}")


# ---- tiny profile: every component builds and runs ---------------------------------------


def test_gpa_tiny_lm_forward(gpa_tiny) -> None:
    inputs = gpa_tiny.example_inputs("lm", batch=2)
    with torch.no_grad():
        logits = gpa_tiny.lm(**inputs).logits
    from helpers.models.gpa import AUDIO_TOKENS, MARKERS

    # the LM vocabulary: the tokenizer's (the shipped one plus the task markers), then GPA's
    # 28,672 audio tokens in the release's order
    vocab = len(gpa_tiny.tokenizer) + AUDIO_TOKENS
    assert len(gpa_tiny.tokenizer) == len(shipped_tokenizer()) + len(MARKERS)
    assert logits.shape == (2, inputs["input_ids"].shape[1], vocab)
    assert torch.isfinite(logits).all()
    assert type(gpa_tiny.lm).__name__ == "Qwen3ForCausalLM"
    assert gpa_tiny.lm.config.tie_word_embeddings
    assert gpa_tiny.lm.lm_head.weight is gpa_tiny.lm.model.embed_tokens.weight


def test_covo_tiny_every_component_forward(covo_tiny) -> None:
    enc_cfg = covo_tiny.components["audio_encoder"].config
    tokens = covo_tiny.recipe.audio_tokens(covo_tiny)
    assert tokens == 188  # 1500 -> 750 -> 375 -> 188, the full-shape count too
    shapes = {}
    for name in ["audio_encoder", "adapter", "lm", "chat"]:
        inputs = covo_tiny.example_inputs(name, batch=2)
        with torch.no_grad():
            out = _first(covo_tiny.module(name)(**inputs))
        assert torch.isfinite(out).all(), name
        shapes[name] = tuple(out.shape)
    assert shapes["audio_encoder"] == (2, enc_cfg.max_source_positions, enc_cfg.d_model)
    assert shapes["adapter"] == (2, tokens, covo_tiny.lm.config.hidden_size)
    # the LM vocabulary: the tokenizer's (with the 3 audio markers) plus 16,384 audio tokens
    assert shapes["chat"][0] == 2 and shapes["chat"][2] == len(covo_tiny.tokenizer) + 16_384
    assert len(covo_tiny.tokenizer) == len(shipped_tokenizer()) + 3
    assert [type(m).__name__ for m in covo_tiny.components.values()] == [
        "WhisperEncoder", "CovoAudioAdapter", "Qwen2ForCausalLM", "Token2Wav"]
    names = {k.split(".")[0] for k in covo_tiny.model.state_dict()}
    assert names == {"llm", "encoder", "audio_adapter"}  # the release's module names


def test_chat_places_audio_embeddings_at_placeholders(covo_tiny) -> None:
    chat: CovoAudioForCausalLM = covo_tiny.model
    inputs = covo_tiny.example_inputs("chat")
    ids, feats = inputs["input_ids"], inputs["input_features"]
    mask = ids == chat.audio_token_id  # [1, S]
    assert chat.audio_token_id == covo_tiny.tokenizer.convert_tokens_to_ids("<|cAUDIO|>")
    with torch.no_grad():
        embeds = chat.embed(ids, feats)  # [1, S, H]
        audio = chat.audio_features(feats)  # [1, 188, H]
        text = chat.llm.get_input_embeddings()(ids)
    n = int(mask.sum())  # the clip's audio tokens (en_fox: a few seconds), the first n features
    assert 0 < n < audio.shape[1]
    assert torch.equal(embeds[mask], audio[0, :n])  # in order, one per placeholder
    assert torch.equal(embeds[~mask], text[~mask])  # text positions untouched
    # the audio changes the logits after the first placeholder, never before it
    with torch.no_grad():
        with_audio = chat(**inputs).logits
        text_only = chat.llm(input_ids=ids, attention_mask=inputs["attention_mask"]).logits
    first = int(mask[0].nonzero()[0])
    assert torch.equal(with_audio[:, :first], text_only[:, :first])
    assert not torch.allclose(with_audio[:, first:], text_only[:, first:])


def test_chat_rejects_wrong_placeholder_count(covo_tiny) -> None:
    inputs = covo_tiny.example_inputs("chat")
    ids = inputs["input_ids"]
    token = covo_tiny.model.audio_token_id
    first = int((ids[0] == token).nonzero()[0])
    long = torch.cat([ids[:, :first], torch.full((1, 200), token), ids[:, first:]], dim=1)
    with pytest.raises(ValueError, match=r"\[2\d\d\] <\|cAUDIO\|> placeholder.*1 row\(s\) of 188"):
        covo_tiny.model.embed(long, inputs["input_features"])


def test_example_inputs_unknown_component(gpa_tiny) -> None:
    with pytest.raises(KeyError, match="no component 'vocoder'; known: \\['lm', 'speech_tokenizer', 'codec'\\]"):
        gpa_tiny.example_inputs("vocoder")


# ---- full-shape: counts on the meta device ------------------------------------------------


def test_gpa_full_shape_count_on_meta() -> None:
    rss = psutil.Process().memory_info().rss
    rows = models.get("gpa").describe("full-shape")
    lm = rows[0]
    assert [r["component"] for r in rows] == ["lm", "speech_tokenizer", "codec"]
    # GPA on Ascend 910 adaptation report: 312.6M; asserted to 0.1M
    assert abs(lm["parameters"] - 312.6e6) <= 0.1e6
    assert lm["tied"] and lm["input_embeddings"] == 180_445 * 512
    assert lm["bytes_bfloat16"] == 2 * lm["parameters"]
    assert psutil.Process().memory_info().rss - rss < 300e6  # 1.25 GB if it had allocated


def test_covo_full_shape_counts_on_meta() -> None:
    rss = psutil.Process().memory_info().rss
    rows = models.get("covo-audio-chat").describe("full-shape")
    by = {r["component"]: r for r in rows}
    total = total_row([by[n] for n in ("audio_encoder", "adapter", "lm")])["parameters"]
    # the release's classes at its default config, counted on the meta device
    # (Tencent/Covo-Audio covoaudio/modeling_covo_audio.py + configuration_covo_audio.py)
    assert total == 8_402_417_920
    assert by["lm"]["parameters"] == 7_730_240_000
    assert by["audio_encoder"]["parameters"] == 636_968_960
    assert by["adapter"]["parameters"] == 35_208_960
    assert by["lm"]["input_embeddings"] == by["lm"]["output_embeddings"] == 168_055 * 3584
    assert not by["lm"]["tied"]
    assert by["vocoder"]["class"] == "Token2Wav"
    # 33.6 GB in float32 if anything had been allocated
    assert psutil.Process().memory_info().rss - rss < 500e6


def test_full_shape_skeletons_stay_on_meta() -> None:
    recipe = models.get("covo-audio-chat")
    skel = recipe.skeletons(recipe.configs("full-shape"), torch.bfloat16)
    assert all(p.is_meta for m in skel.values() for p in m.parameters())


# ---- the tiny cache: save_pretrained once, from_pretrained always ---------------------------


@pytest.mark.parametrize("name", ["gpa", "covo-audio-chat"])
def test_saved_tiny_matches_fresh_build(name: str, request: pytest.FixtureRequest) -> None:
    loaded = request.getfixturevalue("gpa_tiny" if name == "gpa" else "covo_tiny")
    assert Path(loaded.source).parent == cache.root()
    weights_file = "model.safetensors" if name == "gpa" else "model-00001-of-00002.safetensors"
    assert (Path(loaded.source) / weights_file).is_file()
    fresh = models.get(name).build("tiny", seed=0)
    for comp, module in fresh.items():
        inputs = loaded.example_inputs(comp)
        with torch.no_grad():
            assert torch.equal(_first(module(**inputs)), _first(loaded.components[comp](**inputs))), comp


def test_tiny_load_timings_and_floor(gpa_tiny, covo_tiny) -> None:
    for loaded in (gpa_tiny, covo_tiny):
        t = loaded.timings
        parts = t["config_init_s"] + t["tokenizer_s"] + t["weights_read_s"] + t["to_device_s"]
        assert 0 < parts <= t["load_seconds"] * 1.01 + 1e-3

        json.dumps(loaded.metrics())  # plain JSON values


def test_cache_rebuilds_when_tiny_config_changes(model_cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = GpaRecipe()
    path, _ = cache.ensure(recipe, seed=7)
    before = cache.stamp_of(path)
    again, built = cache.ensure(recipe, seed=7)
    assert (again, built) == (path, False)
    monkeypatch.setattr(gpa_module, "TINY", {**gpa_module.TINY, "num_hidden_layers": 3})
    again, built = cache.ensure(recipe, seed=7)
    assert built and cache.stamp_of(again) != before
    config = json.loads((again / "config.json").read_text())
    assert config["num_hidden_layers"] == 3


def test_concurrent_cache_builds(tmp_path: Path) -> None:
    code = ("from helpers import models; from helpers.models import cache; "
            "p, built = cache.ensure(models.get('gpa'), 3); print(p, built)")
    env = {**os.environ, cache.ENV: str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpa-tiny-seed3"]  # no temp leftovers
    assert {out.split()[0] for out, _ in outs} == {str(tmp_path / "gpa-tiny-seed3")}
    assert "True" in {out.split()[1] for out, _ in outs}
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(tmp_path / "gpa-tiny-seed3"))
    assert lm.config.num_hidden_layers == 2


def test_device_map_auto_on_cpu_degenerates_to_cpu(model_cache: Path) -> None:
    cfg = _cfg("covo-audio-chat", device_map="auto")
    loaded = models.get("covo-audio-chat").load(CPU, F32, **cfg.recipe_args())
    assert set(loaded.placement.values()) == {"cpu"}
    assert any("placed every module on cpu" in n for n in loaded.notes)
    assert loaded.timings["to_device_s"] == 0.0
    with torch.no_grad():
        assert torch.isfinite(loaded.model(**loaded.example_inputs()).logits).all()


def test_random_weight_path_in_place() -> None:
    """full-shape's path (meta skeleton -> storage on the device -> the model's init), run on
    the tiny dims so it stays fast."""

    class SmallFull(GpaRecipe):
        def configs(self, profile: str) -> dict:
            return super().configs("tiny")

    loaded = SmallFull().load(CPU, F32, **_cfg("gpa", profile="full-shape", seed=5).recipe_args())
    t = loaded.timings
    assert t["weights_read_s"] == 0.0 and t["to_device_s"] == 0.0 and t["config_init_s"] > 0
    assert "random weights, seed 5" in loaded.source
    lm = loaded.lm
    assert not any(p.is_meta for p in lm.parameters())
    assert torch.equal(lm.model.norm.weight, torch.ones_like(lm.model.norm.weight))
    std = float(lm.model.layers[0].mlp.up_proj.weight.detach().std())
    assert 0.015 < std < 0.025  # normal(0, initializer_range=0.02)
    with torch.no_grad():
        assert torch.isfinite(lm(**loaded.example_inputs()).logits).all()


# ---- real profile: layouts and bad inputs -------------------------------------------------


def _copy_tiny(name: str, dst: Path, model_cache: Path) -> Path:
    src, _ = cache.ensure(models.get(name), 0)
    shutil.copytree(src, dst)
    return dst


def _load_real(name: str, model_dir: Path):
    return models.get(name).load(CPU, F32, **_cfg(name, model_dir=str(model_dir)).recipe_args())


def test_real_profile_reads_a_model_dir(tmp_path: Path, model_cache: Path, gpa_tiny) -> None:
    d = _copy_tiny("gpa", tmp_path / "GPA", model_cache)
    loaded = _load_real("gpa", d)
    assert loaded.profile == "real" and loaded.source == str(d)
    inputs = loaded.example_inputs()
    with torch.no_grad():
        assert torch.equal(loaded.lm(**inputs).logits, gpa_tiny.lm(**inputs).logits)


def test_hf_recipe_reads_any_causal_lm(tmp_path: Path, model_cache: Path) -> None:
    d = _copy_tiny("gpa", tmp_path / "lm", model_cache)
    loaded = _load_real("hf", d)
    assert type(loaded.lm).__name__ == "Qwen3ForCausalLM"
    with pytest.raises(ModelLoadError, match="hf has no profile 'full-shape'"):
        models.get("hf").describe("full-shape")


def test_missing_model_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match=f"{missing} does not exist; expected a save_pretrained folder"):
        _load_real("gpa", missing)


def test_model_dir_without_config(tmp_path: Path, model_cache: Path) -> None:
    d = _copy_tiny("gpa", tmp_path / "m", model_cache)
    (d / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=f"{d} has no config.json \\(found: .*model.safetensors"):
        _load_real("gpa", d)


def test_model_dir_without_weights(tmp_path: Path, model_cache: Path) -> None:
    d = _copy_tiny("gpa", tmp_path / "m", model_cache)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="has config.json but no weights"):
        _load_real("gpa", d)


def test_truncated_weights(tmp_path: Path, model_cache: Path) -> None:
    d = _copy_tiny("gpa", tmp_path / "m", model_cache)
    weights = d / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=f"weights file {weights} .* is corrupt or truncated") as err:
        _load_real("gpa", d)
    assert "SafetensorError" in type(err.value.__cause__).__name__


def test_garbage_weights(tmp_path: Path, model_cache: Path) -> None:
    d = _copy_tiny("gpa", tmp_path / "m", model_cache)
    (d / "model.safetensors").write_bytes(b"not a safetensors file" * 4)
    with pytest.raises(ModelLoadError, match="corrupt or truncated.*copy it again"):
        _load_real("gpa", d)


def test_missing_shard(tmp_path: Path, model_cache: Path) -> None:
    d = _copy_tiny("gpa", tmp_path / "m", model_cache)
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="lists 2 shard.*1 are missing.*model-00002-of-00002"):
        _load_real("gpa", d)


def test_weights_that_do_not_match_config(tmp_path: Path, model_cache: Path) -> None:
    d = _copy_tiny("gpa", tmp_path / "m", model_cache)
    config = json.loads((d / "config.json").read_text())
    config["num_hidden_layers"] = 3  # the checkpoint holds 2 layers
    config["layer_types"] = config["layer_types"] + config["layer_types"][-1:]
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="lack .* tensor.*layers.2.*does not match its config.json"):
        _load_real("gpa", d)


def test_invalid_config(tmp_path: Path, model_cache: Path) -> None:
    d = _copy_tiny("gpa", tmp_path / "m", model_cache)
    config = json.loads((d / "config.json").read_text())
    config["num_hidden_layers"] = 3  # layer_types still lists 2
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=f"(?s)cannot read the config.json files in {d}.*layer.types"):
        _load_real("gpa", d)
    (d / "config.json").write_text("{ not json")
    with pytest.raises(ModelLoadError, match="config.json is not valid JSON"):
        _load_real("gpa", d)


def test_covo_release_layout_is_strict(tmp_path: Path, model_cache: Path) -> None:
    """A missing, unexpected or mis-shaped tensor, or a truncated shard, names tensor and file."""
    from safetensors.torch import load_file, save_file

    d = _copy_tiny("covo-audio-chat", tmp_path / "covo", model_cache)
    shard = d / "model-00002-of-00002.safetensors"
    state = load_file(str(shard))
    key = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != key}, str(shard))
    with pytest.raises(ModelLoadError, match=f"lack 1 tensor.*{key}"):
        _load_real("covo-audio-chat", d)
    save_file({**state, "llm.extra.weight": torch.zeros(2)}, str(shard))
    with pytest.raises(ModelLoadError, match=f"{shard}.*llm.extra.weight"):
        _load_real("covo-audio-chat", d)
    save_file({**state, key: torch.zeros(3, 5)}, str(shard))
    with pytest.raises(ModelLoadError, match=f"tensor {key} in {shard} has shape \\[3, 5\\]"):
        _load_real("covo-audio-chat", d)
    save_file(state, str(shard))
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match=f"{shard}.*corrupt or truncated"):
        _load_real("covo-audio-chat", d)


def test_covo_refuses_another_architecture(tmp_path: Path, model_cache: Path) -> None:
    d = _copy_tiny("covo-audio-chat", tmp_path / "covo", model_cache)
    (d / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(ModelLoadError, match="implements model_type covo_audio.*'qwen3'"):
        _load_real("covo-audio-chat", d)


def test_covo_tokenizer_without_audio_token(tmp_path: Path, model_cache: Path) -> None:
    d = _copy_tiny("covo-audio-chat", tmp_path / "covo", model_cache)
    shipped_tokenizer().save_pretrained(str(d))  # no <|cAUDIO|> markers
    with pytest.raises(ModelLoadError, match="no token <\\|begofcAUDIO\\|>, <\\|cAUDIO\\|>"):
        _load_real("covo-audio-chat", d)


def test_covo_without_token2wav_still_loads(tmp_path: Path, model_cache: Path) -> None:
    d = _copy_tiny("covo-audio-chat", tmp_path / "covo", model_cache)
    shutil.rmtree(d / "token2wav")
    loaded = _load_real("covo-audio-chat", d)
    assert "vocoder" not in loaded.components
    assert any("token2wav is not loaded" in n for n in loaded.notes)


def test_unknown_model_lists_recipes() -> None:
    with pytest.raises(KeyError, match="unknown model 'qwen'; known recipes: covo-audio-chat, gpa, hf"):
        models.get("qwen")


# ---- tokenizer and CLI --------------------------------------------------------------------


def test_shipped_tokenizer() -> None:
    from transformers import PreTrainedTokenizerFast

    tok = compat.load_tokenizer(TOKENIZER_DIR)
    assert 1000 <= len(tok) <= 2000
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio|>"):
        ids = tok(special, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, special
    prompts = json.loads((paths.DATA / "prompts.json").read_text(encoding="utf-8"))
    assert len(prompts["en"]) == 8 and len(prompts["zh"]) == 8
    for text in prompts["en"] + prompts["zh"]:
        assert tok.decode(tok(text)["input_ids"]) == text
    assert isinstance(PreTrainedTokenizerFast.from_pretrained(
        str(TOKENIZER_DIR), **compat.tokenizer_kwargs(TOKENIZER_DIR)), PreTrainedTokenizerFast)


@pytest.mark.skipif(compat.release(transformers.__version__)[0] < 5,
                    reason="data/tokenizer is written by transformers 5's save_pretrained; "
                           "4.x writes other bytes for the same tokenizer")
def test_tokenizer_rebuild_is_reproducible() -> None:
    script = paths.ROOT / "scripts" / "build_tokenizer.py"
    run = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "matches a fresh build" in run.stdout


def test_describe_cli() -> None:
    run = subprocess.run([sys.executable, "-m", "helpers.models", "describe", "covo-audio-chat",
                          "--profile", "full-shape"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    # 8,402,417,920 encoder + adapter + LM, plus the 366,561,170 token2wav
    assert "8,768,979,090 (8.77B)" in run.stdout and "GB bfloat16" in run.stdout
    lines = {ln.split()[0]: ln for ln in run.stdout.splitlines()[2:]}
    assert lines["lm"].split()[-2] == "15.460"  # 7.73B x 2 bytes


def test_describe_cli_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.models.__main__ import main

    assert main(["describe", "nope"]) == 2
    assert "known recipes: covo-audio-chat, gpa, hf" in capsys.readouterr().err
    assert main(["describe", "hf"]) == 2  # real only, and no model dir given
    assert "profile real reads MODEL_DIR" in capsys.readouterr().err
    assert main(["describe", "gpa", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["component"] == "lm" and rows[0]["parameters"] == 312_625_152
    assert rows[-1]["component"] == "total"
    assert rows[-1]["parameters"] == sum(r["parameters"] for r in rows[:-1])


def test_placement_plan_split_per_component() -> None:
    """A two-card plan over the end-to-end model, cut into one map per component."""
    from helpers.models import placement

    plan = {"audio_encoder": 0, "adapter": 0, "lm.model.embed_tokens": 0,
            "lm.model.layers.0": 0, "lm.model.layers.1": 1, "lm.model.norm": 1, "lm.lm_head": 1}
    maps = placement.split(plan, ["audio_encoder", "adapter", "lm"], "npu")
    assert maps["audio_encoder"] == {"": "npu:0"} and maps["adapter"] == {"": "npu:0"}
    assert maps["lm"] == {"model.embed_tokens": "npu:0", "model.layers.0": "npu:0",
                          "model.layers.1": "npu:1", "model.norm": "npu:1", "lm_head": "npu:1"}
    assert placement.devices_of(maps) == ["npu:0", "npu:1"]
    assert placement.flat(maps)["lm.lm_head"] == "npu:1"
    assert placement.split({"": "cpu"}, ["lm"], "cpu") == {"lm": {"": "cpu"}}
