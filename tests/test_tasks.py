"""The tasks stage: WER / CER against hand-computed cases, AUDIO_DIR with good and bad files,
the decoding loop's rules, and the tasks of both recipes end to end on the tiny profile."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from helpers import audio
from helpers.config import RunConfig
from helpers.errors import ConfigError
from helpers.stages import tasks
from helpers.stages.kit import target
from helpers.tasks import inputs, metrics

# ---- WER / CER -----------------------------------------------------------------------------


def test_wer_hand_computed() -> None:
    # one substitution (brown -> black) and one deletion (lazy) over 9 reference words
    r = metrics.error_rate("The quick brown fox jumps over the lazy dog.",
                           "the quick black fox jumps over the dog", "en")
    assert r["metric"] == "WER" and r["reference_tokens"] == 9
    assert (r["substitutions"], r["deletions"], r["insertions"]) == (1, 1, 0)
    assert r["rate"] == pytest.approx(2 / 9)
    # normalization: case, punctuation and spacing do not count
    assert metrics.error_rate("Hello, World!", "hello   world", "en")["rate"] == 0.0
    # an insertion can push the rate over 1
    assert metrics.error_rate("yes", "no no no", "en")["rate"] == pytest.approx(3.0)


def test_cer_chinese_without_spaces() -> None:
    # 今天天气很好 vs 今天天气不好: one substituted character of six
    r = metrics.error_rate("今天天气很好。", "今天 天气不好", "zh")
    assert r["metric"] == "CER" and r["reference_tokens"] == 6
    assert r["rate"] == pytest.approx(1 / 6)
    # full-width punctuation and spaces are removed; a missing character is a deletion
    r = metrics.error_rate("请打电话给我。", "请打电话给", "zh")
    assert (r["deletions"], r["rate"]) == (1, pytest.approx(1 / 6))
    assert metrics.language_of("北京欢迎你") == "zh" and metrics.language_of("hi") == "en"


def test_empty_reference_and_corpus_rate() -> None:
    assert metrics.error_rate("...", "x", "en")["rate"] is None
    pooled = metrics.corpus_rate([("a b c d", "a b c d", "en"), ("a b", "a x", "en"),
                                  ("好的", "好", "zh")])
    assert pooled["WER"]["rate"] == pytest.approx(1 / 6)  # 1 edit over 6 words, not a mean
    assert pooled["CER"]["rate"] == pytest.approx(1 / 2)
    assert metrics.drop_points(0.12, 0.10) == pytest.approx(2.0)


# ---- AUDIO_DIR ------------------------------------------------------------------------------


def _tone(seconds: float, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_audio_dir_mixes_good_and_bad_files(tmp_path: Path) -> None:
    sf.write(tmp_path / "good.wav", _tone(1.0), 16_000)
    (tmp_path / "good.txt").write_text("hello there\n", encoding="utf-8")
    sf.write(tmp_path / "zh.flac", _tone(0.8, 22_050), 22_050)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"this is not audio at all" * 10)
    sf.write(tmp_path / "short.wav", _tone(0.02), 16_000)
    sf.write(tmp_path / "long.wav", _tone(31.0), 16_000)
    nan = _tone(0.5)
    nan[10] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16_000, subtype="FLOAT")
    (tmp_path / "notes.mp3").write_bytes(b"ID3")
    (tmp_path / inputs.MANIFEST).write_text(
        "# file\ttext\tlanguage\nzh.flac\t你好世界\ngood.wav\tignored: the .txt wins\n"
        "gone.wav\tthis file is missing\n", encoding="utf-8")
    clips = {c.name: c for c in inputs.from_dir(tmp_path)}
    assert clips["good"].usable and clips["good"].text == "hello there"
    assert clips["zh"].usable and clips["zh"].language == "zh" and clips["zh"].text == "你好世界"
    assert clips["zh"].seconds == pytest.approx(0.8, abs=1e-3)  # resampled to 16 kHz
    why = {n: c.error for n, c in clips.items() if not c.usable}
    assert "0 bytes" in why["empty"]
    assert "cannot read" in why["junk"]
    assert "shorter than" in why["short"]
    assert "over the 30-s window" in why["long"]
    assert "NaN" in why["nan"]
    assert "not a .wav or .flac" in why["notes"]
    assert "names gone.wav, which is not in" in why["gone"]
    assert len([c for c in clips.values() if c.usable]) == 2


def test_audio_dir_errors_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a folder"):
        inputs.from_dir(tmp_path / "missing")
    clips = inputs.from_dir(tmp_path)  # an empty folder is one row that says so
    assert len(clips) == 1 and "holds no .wav / .flac" in clips[0].error


def test_fixtures_are_the_default() -> None:
    clips = inputs.clips()
    assert [c.name for c in clips] == [f.name for f in audio.fixtures()]
    assert all(c.usable and c.text for c in clips)


# ---- decoding --------------------------------------------------------------------------------


def test_bad_knobs_name_the_choices() -> None:
    cfg = RunConfig.from_params(model="gpa")
    with pytest.raises(ConfigError, match="greedy, release"):
        tasks.settings(cfg, decoding="beam")
    with pytest.raises(ConfigError, match="auto, on or off"):
        tasks.settings(cfg, audio_ids_only="maybe")


# ---- the tasks end to end on the tiny profile ------------------------------------------------


@pytest.fixture(scope="module")
def gpa_runs(model_cache: Path) -> tuple[tasks.TaskRuns, object]:
    cfg = RunConfig.from_params(model="gpa", device="cpu", dtype="float32")
    runs = tasks.run_all(target(cfg), fixtures="en_fox,zh_weather",
                         s=tasks.settings(cfg, max_new_tokens=8))
    return runs, tasks.compare(runs)


def test_gpa_tasks_agree_on_identical_sides(gpa_runs) -> None:
    runs, frame = gpa_runs
    assert not runs.target.error and not runs.reference.error
    assert sorted(set(frame["task"])) == ["stt", "tts-a", "vc"] and len(frame) == 6
    assert frame["error"].isna().all()
    # float32 on the CPU on both sides, the same weights: every id agrees
    assert (frame["agreement %"] == 100.0).all() and (frame["prompt agreement %"] == 100.0).all()
    speech = frame[frame["task"].isin(["tts-a", "vc"])]
    assert (speech["snr_db"] == math.inf).all() and (speech["mel_distance_db"] == 0.0).all()
    stt = frame[frame["task"] == "stt"]
    assert set(stt["metric"]) == {"WER", "CER"}  # en_fox is English, zh_weather Chinese
    assert stt["rate target"].notna().all()
    out = runs.target.get("tts-a", "en_fox")
    assert out.rate == 16_000 and out.wave.shape[0] == len(out.semantic) * 320
    assert out.first_token_s > 0 and out.first_audio_s >= out.first_token_s and out.rtf > 0
    checks = {c.name: c for c in tasks.checks(runs, frame)}
    # free-running agreement is shown, not judged; the ids are judged teacher-forced
    assert checks["stt: generated ids, free-running agree target vs reference (%, lowest "
                  "input)"].passed is None
    forced = [c for name, c in checks.items() if "teacher-forced ids" in name]
    assert forced and all(c.passed is not False for c in forced)
    assert checks["tts-a: teacher-forced ids: relative L2 p95 over steps"].value == 0.0
    assert checks["tts-a: waveform level target vs reference where the ids agree (|dB|, "
                  "largest input)"].passed
    assert checks["tts-a: waveform SNR target vs reference where the ids agree (dB, lowest "
                  "input)"].passed
    assert checks["stt: CER drop target vs reference (points)"].passed is None  # tiny: info


def test_gpa_players_and_results(gpa_runs) -> None:
    runs, frame = gpa_runs
    shown = tasks.players(runs, 1)
    assert [h.split(" (text")[0] for h, _ in shown] == ["tts-a: en_fox", "vc: en_fox"]
    assert shown[0][1].data.count("data:audio/wav;base64,") == 3  # the voice, both outputs
    assert shown[1][1].data.count("data:audio/wav;base64,") == 4  # source, voice, both outputs
    assert "reference voice zh_weather" in shown[0][1].data
    section = tasks.results_section(runs, frame)
    assert section.metrics["settings"]["max_new_tokens"] == 8
    assert len(section.metrics["outputs"]["target"]) == 6
    assert any("random weights" in n for n in section.metrics["notes"])


def test_a_clip_is_tokenized_once_per_side_and_each_task_charged_its_seconds(
        model_cache: Path) -> None:
    from helpers.stages import kit
    from helpers.tasks import gpa

    cfg = RunConfig.from_params(model="gpa", device="cpu", dtype="float32")
    side = target(cfg).side
    pipe = gpa.Pipeline(kit.load(cfg, side), side.backend, max_new_tokens=2)
    clip = inputs.fixtures("en_fox")[0]
    first = gpa.TaskClock(side.backend)
    first.start()
    semantic, glob = pipe.bicodec_tokens(clip.samples16, first)
    assert first.charged == 0.0 and len(pipe.tokenized) == 1
    calls = []
    tokenize = pipe.codec.tokenize
    pipe.codec.tokenize = lambda *a: calls.append(a) or tokenize(*a)
    again = gpa.TaskClock(side.backend)
    again.start()
    semantic2, glob2 = pipe.bicodec_tokens(clip.samples16.copy(), again)
    assert not calls  # not tokenized again
    assert semantic2.equal(semantic) and glob2.equal(glob)
    took = next(iter(pipe.tokenized.values()))[2]
    assert took > 0 and again.charged == took and again.stamp() >= took
    other = inputs.fixtures("zh_weather")[0]
    pipe.bicodec_tokens(other.samples16, again)
    assert len(calls) == 1 and again.charged == took  # a new clip runs, charged nothing


def test_gpa_transcribes_back_the_first_input_of_each_language_with_random_weights(
        gpa_runs) -> None:
    runs, frame = gpa_runs
    assert runs.settings.roundtrip_inputs == 1  # tiny: random weights
    for task in ("tts-a", "vc"):  # en_fox and zh_weather: the first of their languages
        assert runs.target.get(task, "en_fox").roundtrip is not None
        assert runs.reference.get(task, "zh_weather").roundtrip is not None
    names = {c.name for c in tasks.checks(runs, frame)}
    assert {"tts-a: WER drop target vs reference (points) (round trip: the model's own stt of "
            "its output)", "vc: CER drop target vs reference (points) (round trip: the model's "
            "own stt of its output)"} <= names  # both rates stay
    assert any("round trip" in n and "each language" in n for n in runs.settings.notes)
    clips = inputs.fixtures("en_fox,en_stella,zh_weather,zh_ai")
    assert tasks.transcribed_back(clips, runs.settings) == {"en_fox", "zh_weather"}
    real = tasks.settings(SimpleNamespace(model="gpa", profile="real", seed=0))
    assert real.roundtrip_inputs == 0 and len(tasks.transcribed_back(clips, real)) == 4
    assert not tasks.transcribed_back(clips, tasks.Resolved(8, "greedy", True, False, 1, 1))
    with pytest.raises(ConfigError, match="roundtrip_inputs"):
        tasks.settings(SimpleNamespace(model="gpa", profile="real", seed=0), roundtrip_inputs=-1)


def test_not_transcribed_back_is_no_rate_not_a_full_error() -> None:
    out = tasks.TaskOutput("tts-a", "en_fox", tokens=[1], roundtrip=None)
    clip = inputs.fixtures("en_fox")[0]
    assert tasks._rate(out, clip, "roundtrip") == {"rate": None, "why": "not transcribed back"}
    out.roundtrip = ""  # transcribed, heard nothing: every word missed
    assert tasks._rate(out, clip, "roundtrip")["rate"] == 1.0


def test_a_side_tokenizes_each_clip_once_and_decodes_each_output_once(
        model_cache: Path, monkeypatch) -> None:
    from helpers.models import bicodec

    calls = {"tokenize": 0, "detokenize": 0}
    for name in calls:
        method = getattr(bicodec.BiCodecCodec, name)

        def counted(self, *a, _m=method, _n=name):
            calls[_n] += 1
            return _m(self, *a)

        monkeypatch.setattr(bicodec.BiCodecCodec, name, counted)
    cfg = RunConfig.from_params(model="gpa", device="cpu", dtype="float32")
    clips = inputs.fixtures("en_fox,zh_weather")
    side = tasks.run_side(cfg, target(cfg).side, clips, tasks.settings(
        cfg, max_new_tokens=4, roundtrip=False))
    assert not side.error and len(side.outputs) == 6
    # the warm-up's piece of en_fox, then each clip once (stt; tts-a and vc reuse them)
    assert calls["tokenize"] == 1 + len(clips)
    # one waveform per tts-a / vc output: 4 ids fit one streaming chunk, not decoded again
    assert calls["detokenize"] == 4
    out = side.outputs[("vc", "en_fox")]
    assert out.first_audio_s >= out.first_token_s > 0


def test_first_chunk_is_the_whole_output_when_it_fits_in_one() -> None:
    from helpers.tasks.results import first_chunk_seconds

    decoded: list[int] = []
    assert first_chunk_seconds(50, 50, 0.25, lambda: decoded.append(1)) == 0.25
    assert not decoded  # one chunk: its decoding was the whole output's
    assert first_chunk_seconds(51, 50, 0.25, lambda: decoded.append(1)) >= 0.0
    assert decoded == [1]  # longer: the first chunk decoded again, timed


def test_covo_dialogue_two_rounds(model_cache: Path) -> None:
    cfg = RunConfig.from_params(model="covo-audio-chat", device="cpu", dtype="float32")
    runs = tasks.run_all(target(cfg), fixtures="en_fox,zh_ai",
                         s=tasks.settings(cfg, max_new_tokens=6))
    frame = tasks.compare(runs)
    assert list(frame["input"]) == ["en_fox (round 1)", "zh_ai (round 2)"] * 2
    assert frame["error"].isna().all() and (frame["agreement %"] == 100.0).all()
    a2ta = runs.target.get("a2ta", "zh_ai (round 2)")
    assert a2ta.extra["round"] == 2 and a2ta.wave is not None and a2ta.rate == 24_000
    assert frame[frame["task"] == "a2t"]["rate target"].isna().all()  # a reply, not a transcript
    # round 2 continues round 1's cache: its prompt has no system prompt
    r1, r2 = runs.target.get("a2t", "en_fox (round 1)"), runs.target.get("a2t", "zh_ai (round 2)")
    assert len(r2.prompt) < len(r1.prompt)


def test_release_sampling_draws_the_same_ids_on_both_sides(model_cache: Path) -> None:
    """decoding=release samples tts-a (temperature 0.2) from one seeded CPU stream: two sides
    with the same weights and precision draw the same ids."""
    cfg = RunConfig.from_params(model="gpa", device="cpu", dtype="float32")
    runs = tasks.run_all(target(cfg), fixtures="zh_ai", s=tasks.settings(
        cfg, max_new_tokens=6, decoding="release", roundtrip=False))
    frame = tasks.compare(runs)
    assert (frame["agreement %"] == 100.0).all()
    assert "sampling (temperature 0.2" in runs.target.get("tts-a", "zh_ai").sampling
