import pytest

from helpers.cli import main
from helpers.config import ConfigError, RunConfig


def test_defaults_are_the_embedded_default():
    cfg = RunConfig.from_params()
    assert (cfg.model, cfg.profile, cfg.device, cfg.dtype) == ("gpa", "tiny", "auto", "auto")


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError) as exc:
        RunConfig.from_params(modle="gpa")
    msg = str(exc.value)
    assert "modle" in msg
    for name in ("MODEL", "MODEL_DIR", "PROFILE", "DEVICE", "DTYPE", "STAGES", "OUT"):
        assert name in msg


@pytest.mark.parametrize("params, needle", [
    ({"seed": "1"}, "seed must be int"),
    ({"seed": True}, "seed must be int"),
    ({"strict": 1}, "strict must be bool"),
    ({"stages": "environment"}, "stages must be a list"),
    ({"device": "gpu"}, "cuda:N"),
    ({"dtype": "fp8"}, "float32"),
    ({"profile": "huge"}, "full-shape"),
    ({"model": "llama"}, "known recipes: covo-audio-chat, gpa, hf"),
    ({"profile": "real"}, "model_dir"),
    ({"model_dir": "/x", "profile": "tiny"}, "only read with profile real"),
    ({"model": "hf"}, "MODEL_DIR"),
])
def test_bad_values_say_what_is_wrong(params, needle):
    with pytest.raises(ConfigError, match=needle):
        RunConfig.from_params(**params)


def test_model_dir_implies_real_profile():
    assert RunConfig.from_params(model_dir="/weights").profile == "real"


def test_strings_from_make_are_parsed_and_typed():
    cfg = RunConfig.from_strings({"MODEL": "covo-audio-chat", "SEED": "7", "STRICT": "yes",
                                  "STAGES": "environment,3 performance", "device-map": "auto"})
    assert cfg.model == "covo-audio-chat" and cfg.seed == 7 and cfg.strict is True
    assert cfg.stages == ("environment", "3", "performance") and cfg.device_map == "auto"
    with pytest.raises(ConfigError, match="integer"):
        RunConfig.from_strings({"SEED": "seven"})
    with pytest.raises(ConfigError, match="true or false"):
        RunConfig.from_strings({"STRICT": "maybe"})


def test_config_is_frozen_and_round_trips_through_params():
    cfg = RunConfig.from_params(stages=["1"], seed=3)
    with pytest.raises(AttributeError):
        cfg.seed = 4  # type: ignore[misc]
    assert RunConfig.from_params(**cfg.to_params()) == cfg


def test_cli_rejects_unknown_make_variable(capsys):
    assert main(["MODLE=gpa"]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter 'MODLE'" in err and "MODEL_DIR" in err
    assert main(["gpa"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_stage_knobs_and_extra_stages_are_parameters_too():
    cfg = RunConfig.from_strings({"performance.new_tokens": "32", "4.golden": "off",
                                  "EXTRA_STAGES": "/my/stages"})
    assert cfg.extra_stages == "/my/stages"
    # kept as given until the runner checks them against the notebooks (Knobs.resolve)
    assert cfg.knobs.entries == (("performance", "new_tokens", "32"), ("4", "golden", "off"))
    assert cfg.to_params()["knobs"] == {"performance": {"new_tokens": "32"}, "4": {"golden": "off"}}
    typed = RunConfig.from_params(knobs={"performance": {"sweep_batches": [1, 2]}})
    assert typed.knobs.stage("performance") == {"sweep_batches": [1, 2]}
    assert RunConfig.from_params(**typed.to_params()) == typed
    assert hash(typed) == hash(RunConfig.from_params(**typed.to_params()))  # still immutable
    help_text = RunConfig.help()
    assert "EXTRA_STAGES" in help_text and "STAGE.KNOB" in help_text and "KNOBS " not in help_text


@pytest.mark.parametrize("call, needle", [
    (lambda: RunConfig.from_strings({"performance.": "1"}), "expected STAGE.KNOB=VALUE"),
    (lambda: RunConfig.from_strings({".new_tokens": "1"}), "expected STAGE.KNOB=VALUE"),
    (lambda: RunConfig.from_strings({"KNOBS": "a=1"}), "one per word, as STAGE.KNOB=VALUE"),
    (lambda: RunConfig.from_params(knobs={"performance": 3}), "map a stage to {knob: value}"),
    (lambda: RunConfig.from_params(knobs={"p": {"k": None}}), "knob p.k must be a bool"),
    (lambda: RunConfig.from_params(knobs="p.k=1"), "knobs must be a Knobs"),
    (lambda: RunConfig.from_params(extra_stages=3), "extra_stages must be str"),
    (lambda: RunConfig.from_params(model="no/such/recipe.py"), "recipe file no/such/recipe.py"),
])
def test_bad_knobs_and_extension_values_say_what_is_wrong(call, needle):
    with pytest.raises(ConfigError) as exc:
        call()
    assert needle in str(exc.value)


def test_cli_rejects_a_knob_of_an_unknown_stage(capsys, tmp_path):
    assert main(["nostage.x=1", f"OUT={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "unknown stage 'nostage'" in err and "5 performance" in err
    assert not (tmp_path / "out").exists()
