"""The performance stage: settings, forced-length generation, derived rates, weight bytes,
audio durations, the compile time cap, and the sections on the tiny GPA recipe (CPU).

Models are real transformers classes at tiny sizes; timings only assert what physics allows.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from helpers import bench, generate, paths
from helpers.bench import Measurement, Protocol
from helpers.config import RunConfig
from helpers.device.graph import Capture
from helpers.errors import CapReached
from helpers.runner.pipeline import run_pipeline
from helpers.stages import performance as perf
from helpers.stages.kit import Stage, target
from helpers.stages.performance import Settings

# Small and fast, with graph mode on the CPU too (preset thorough; its fixed counts are set here
# to values of their own, and an explicit knob wins over the preset)
QUICK = dict(preset="thorough", new_tokens=8, warmup=1, max_warmup=3, min_iters=2,
             min_seconds=0.001, sweep_min_iters=2, sweep_min_seconds=0.001, max_seconds=10.0,
             sweep_max_seconds=10.0, sweep_batches=(1, 2), sweep_prompt_lengths=(8, 32),
             sweep_new_tokens=4, copy_mib=8)


def _tiny_qwen3(tied: bool = True) -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      max_position_embeddings=256, tie_word_embeddings=tied,
                      eos_token_id=None, pad_token_id=0)
    return Qwen3ForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def run():
    cfg = RunConfig.from_params(model="gpa", profile="tiny", device="cpu")
    return perf.setup(target(cfg), Settings(**QUICK))


# ---- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize("kw,match", [
    ({"new_tokens": 1}, "new_tokens"),
    ({"sweep_batches": []}, "sweep_batches"),
    ({"sweep_prompt_lengths": [16, 0]}, "sweep_prompt_lengths"),
    ({"copy_mib": 0}, "copy_mib"),
    ({"graph_cap_s": -1}, "graph_cap_s"),
    ({"min_iters": 0}, "min_iters"),
    ({"settle_tol": 2.0}, "settle"),
    ({"max_warmup": 0}, "max_warmup"),
])
def test_settings_reject_bad_knobs(kw, match):
    with pytest.raises(ValueError, match=match):
        Settings(**kw)


def test_settings_accept_notebook_lists():
    s = Settings(sweep_batches=[1, 2], sweep_prompt_lengths=[4])
    assert s.sweep_batches == (1, 2) and s.protocol().min_iters == s.min_iters
    assert s.sweep_protocol().min_iters == s.sweep_min_iters


def test_preset_thorough_restores_the_fixed_counts_and_an_explicit_knob_wins():
    quick, thorough = Settings(), Settings(preset="thorough")
    assert quick.protocol().ci == 0.05 and quick.protocol().min_iters == 1
    p = thorough.protocol()
    assert (p.min_iters, p.min_seconds, p.max_seconds, p.max_warmup, p.ci) == (5, 0.5, 60.0, 10, 0.0)
    assert p.settle == 0.05 and thorough.compare_protocol() == p  # comparison rows as the headline
    assert quick.protocol().settle == 0 and quick.compare_protocol().min_iters == 1
    assert thorough.sweep_protocol().min_iters == 3 and thorough.rtf_protocol().min_iters == 2
    assert (quick.warmup_tokens, thorough.warmup_tokens) == (8, 0)  # thorough: whole runs
    assert (quick.sleep_min_iters, thorough.sleep_min_iters) == (1, 3)
    assert Settings(preset="thorough", min_iters=7).protocol().min_iters == 7
    assert "preset=thorough" in quick.skipped() and "nothing skipped" in thorough.skipped()
    with pytest.raises(ValueError, match="preset"):
        Settings(preset="fast")


# ---- generation and derived rates -----------------------------------------------------------


def test_generate_makes_exactly_n_tokens_even_when_eos_comes_first():
    lm = _tiny_qwen3()
    ids = torch.tensor([[5, 6, 7, 8]])  # [1, 4]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    first = lm.generate(**inputs, do_sample=False, max_new_tokens=1, pad_token_id=0)[0, -1]
    lm.generation_config.eos_token_id = int(first)  # greedy's first token is now EOS
    plain = lm.generate(**inputs, do_sample=False, max_new_tokens=12, pad_token_id=0)
    assert plain.shape[1] == 5  # plain generate stops at EOS after one token
    out = perf.hf_generate_fn(lm, inputs, 12, pad=0)()
    assert out.shape == (1, 16)  # forced: 12 new tokens
    assert out[0, 4] != first  # EOS was masked until the 12th token


def _measurement(samples: list[float]) -> Measurement:
    return Measurement("m", Protocol(), "test", warmup_s=[1.0], samples=samples,
                       host_samples=samples, stopped_by="min_iters+min_seconds")


def test_decode_rates_arithmetic():
    from helpers.bench import stats

    run = _measurement([1.37, 1.37])  # 128 tokens: 0.1 s to the first + 127 x 0.01 s
    t = perf.DecodeTiming(run, stats([0.1, 0.1]), stats([1.27, 1.27]), 128, 1, 10)
    r = t.rates()
    assert r["ttft_s"] == pytest.approx(0.1) and r["tpot_s"] == pytest.approx(0.01)
    assert r["decode_tokens_per_s"] == pytest.approx(100.0)
    assert r["e2e_tokens_per_s"] == pytest.approx(128 / 1.37)
    assert r["prefill_tokens_per_s"] == pytest.approx(100.0)  # 10 prompt tokens in 0.1 s
    r4 = perf.DecodeTiming(run, stats([0.1, 0.1]), stats([1.27, 1.27]), 128, 4, 10).rates()
    assert r4["decode_tokens_per_s"] == pytest.approx(400.0)


def test_same_tokens():
    a = torch.tensor([[1, 2, 3, 4]])
    assert perf.graph._same_tokens(a, a.clone())["fraction"] == 1.0
    diff = perf.graph._same_tokens(a, torch.tensor([[1, 2, 9, 4]]))
    assert diff["fraction"] == 0.75 and "position 2" in diff["detail"]
    assert perf.graph._same_tokens(a, a[:, :3])["fraction"] == 0.0


# ---- weights, audio durations ----------------------------------------------------------------


def test_weight_bytes_tied_counts_the_shared_table_once():
    lm = _tiny_qwen3(tied=True).to(torch.bfloat16)
    nbytes, elems, how = perf.decode_weight_bytes(lm)
    assert elems == sum(p.numel() for p in lm.parameters())
    assert nbytes == 2 * elems and "tied" in how


def test_weight_bytes_untied_leaves_out_the_input_table():
    cfg = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    lm = Qwen2ForCausalLM(cfg)
    nbytes, elems, how = perf.decode_weight_bytes(lm)
    all_elems = sum(p.numel() for p in lm.parameters())
    assert elems == all_elems - 300 * 32  # lm_head stays, embed_tokens goes
    assert nbytes == 4 * elems and "untied" in how


class _Recipe:
    name = "stated"

    @staticmethod
    def audio_seconds(loaded, component, inputs):
        return 2.5 if component == "codec" else None


class _Loaded:
    recipe = _Recipe()


def test_audio_seconds_from_input_rates():
    loaded = type("L", (), {"recipe": object()})()
    mel = {"input_features": torch.zeros(1, 128, 3000)}  # 30 s of Whisper frames
    assert perf.audio_seconds(loaded, "enc", mel)[0] == pytest.approx(30.0)
    states = {"audio_states": torch.zeros(1, 1500, 8)}  # 30 s of encoder positions
    assert perf.audio_seconds(loaded, "adapter", states)[0] == pytest.approx(30.0)
    wav = {"input_values": torch.zeros(1, 1, 8000)}  # no module config: 16 kHz
    assert perf.audio_seconds(loaded, "codec", wav)[0] == pytest.approx(0.5)
    assert perf.audio_seconds(loaded, "lm", {"input_ids": torch.zeros(1, 4)}) is None


def test_audio_seconds_stated_by_recipe_wins():
    got = perf.audio_seconds(_Loaded(), "codec", {"input_values": torch.zeros(1, 8000)})
    assert got == (2.5, "stated by the recipe")


# ---- time cap ---------------------------------------------------------------------------------


def test_time_cap_interrupts_a_long_call():
    t0 = time.perf_counter()
    with pytest.raises(CapReached), perf.time_cap(0.2) as enforced:
        assert enforced
        time.sleep(5)
    assert time.perf_counter() - t0 < 4.0  # well before the 5 s sleep ends, even on a busy host


def test_time_cap_not_enforced_off_the_main_thread():
    seen = []
    t = threading.Thread(target=lambda: seen.append(perf.time_cap(0.1).__enter__()))
    t.start()
    t.join()
    assert seen == [False]


# ---- sections on the tiny recipe ----------------------------------------------------------------


def test_sanity_measures_the_known_sleep_and_allocation(run):
    sec = perf.sanity(run)
    timer, memory = sec.checks
    assert memory.passed, memory.detail  # the allocation: load does not change its size
    assert sec.metrics["sleep"]["stats"]["min"] >= 0.2  # the timer never measures it short
    assert timer.passed is not None and timer.threshold == "<= 0.05"  # judged, whatever the load


def test_latency_bandwidth_and_sweeps(run):
    lat = perf.latency(run)
    m = lat.metrics
    assert m["ttft_s"] > 0 and m["e2e_s"] > m["ttft_s"]
    assert m["decode_tokens_per_s"] > 0 and m["memory"]["host_rss"] > 0
    assert lat.data["e2e"].output.shape == (1, 8)  # the new ids of the last timed run
    bw = perf.bandwidth(run, lat)
    assert bw.metrics["weight_bytes_per_token"] == perf.decode_weight_bytes(run.lm)[0]
    assert bw.metrics["utilization"] == pytest.approx(
        bw.metrics["achieved_bytes_per_s"] / bw.metrics["copy_bytes_per_s"])
    assert any("caches" in n for n in bw.notes)  # tiny weights fit in cache: said so
    bs = perf.batch_sweep(run)
    assert list(bs.table["batch"]) == [1, 2] and "status" not in bs.table
    ps = perf.prompt_sweep(run)
    assert list(ps.table["prompt tokens"]) == [8, 32]
    rf = perf.roofline(run, bw, bs)
    assert [p["intensity FLOP/B"] for p in rf.metrics["points"]] == pytest.approx([1.0, 2.0])
    assert "until one product takes >= 20 ms" in rf.notes[0] and "timed runs" in rf.notes[0]
    json.dumps([lat.metrics, bw.metrics, bs.metrics, ps.metrics, rf.metrics], default=str)


def test_prompt_sweep_skips_lengths_past_the_model_limit(run, monkeypatch):
    monkeypatch.setattr(run.lm.config, "max_position_embeddings", 16)
    ps = perf.prompt_sweep(run)
    assert ps.table.loc[ps.table["prompt tokens"] == 32, "status"].item() == "skipped"


def test_rtf_says_when_there_is_no_audio_component(run, monkeypatch):
    monkeypatch.setattr(run.loaded, "components", {"lm": run.lm})
    sec = perf.rtf(run)
    assert sec.table["status"].tolist() == ["not applicable"]


def test_audio_seconds_of_the_gpa_components(run):
    # durations follow from the inputs the recipe feeds and the module's own rates
    for name, expect in (("speech_tokenizer", "log-mel"), ("codec", "samples at 16000 Hz")):
        module = run.loaded.components[name]
        inputs = run.loaded.example_inputs(name)
        seconds, how = perf.audio_seconds(run.loaded, name, inputs, module)
        assert expect in how and seconds > 0
    assert perf.audio_seconds(run.loaded, "lm", perf.lm_inputs(run), run.lm) is None


def test_audio_seconds_of_a_vocoder_from_its_upsampling():
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    cfg = SpeechT5HifiGanConfig(model_in_dim=100, sampling_rate=24_000, upsample_rates=[8, 8, 4],
                                upsample_kernel_sizes=[16, 16, 8], upsample_initial_channel=16,
                                resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]])
    voc = SpeechT5HifiGan(cfg)
    spec = {"spectrogram": torch.zeros(1, 375, 100)}  # 375 frames x 256 samples = 4 s at 24 kHz
    seconds, how = perf.audio_seconds(type("L", (), {"recipe": object()})(), "vocoder", spec, voc)
    assert seconds == pytest.approx(4.0) and "hop 256" in how


@pytest.fixture(scope="module")
def covo_run():
    cfg = RunConfig.from_params(model="covo-audio-chat", profile="tiny", device="cpu")
    return perf.setup(target(cfg), Settings(**QUICK))


def test_rtf_of_covo_encoder_and_adapter(covo_run, monkeypatch):
    r = covo_run
    keep = {k: r.loaded.components[k] for k in ("audio_encoder", "adapter", "lm")}
    monkeypatch.setattr(r.loaded, "components", keep)
    sec = perf.rtf(r)
    rows = {row["component"]: row for row in sec.table.to_dict("records")}
    assert set(rows) == {"audio_encoder", "adapter"}  # the LM takes no audio
    enc = r.loaded.components["audio_encoder"].config
    assert rows["audio_encoder"]["audio s"] == pytest.approx(2 * enc.max_source_positions / 100)
    for row in rows.values():
        assert row["RTF"] == pytest.approx(row["mean s"] / row["audio s"])
        assert row["runs"] >= r.settings.rtf_min_iters


def test_rtf_of_covo_token2wav(covo_run):
    r = covo_run  # every component again: the test before put them back
    sec = perf.rtf(r)
    rows = {row["component"]: row for row in sec.table.to_dict("records")}
    voc = r.loaded.components["vocoder"]
    n = r.loaded.example_inputs("vocoder")["audio_tokens"].shape[1]
    assert rows["vocoder"]["audio s"] == pytest.approx(voc.output_samples(n) / 24_000)
    assert rows["vocoder"]["RTF"] > 0


def test_elf_completeness_of_shared_objects(tmp_path):
    real = next(Path(torch.__file__).parent.glob("_C*.so"))  # a linker-made ELF library
    full = tmp_path / "full.so"
    full.write_bytes(real.read_bytes())
    cut = tmp_path / "cut.so"
    cut.write_bytes(real.read_bytes()[: real.stat().st_size // 2])  # a linker stopped midway
    assert perf.elf_complete(full) and not perf.elf_complete(cut)
    assert not perf.elf_complete(tmp_path / "missing.so")


def test_discard_partial_removes_only_new_broken_artifacts(tmp_path):
    real = next(Path(torch.__file__).parent.glob("_C*.so")).read_bytes()
    files = {"old_cut.so": real[:100], "new_cut.so": real[:100], "new_full.so": real,
             "new_empty.json": b"", "new_source.cpp": b"int f() { return 1; }"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    os.utime(tmp_path / "old_cut.so", (1_000_000, 1_000_000))  # from an earlier run
    assert perf.inductor_cache.discard_partial(tmp_path, time.time() - 60) == 2
    assert sorted(f.name for f in tmp_path.iterdir()) == ["new_full.so", "new_source.cpp",
                                                          "old_cut.so"]


def _eager_backend(sel):  # noqa: ANN001, ANN202 - graph_config's signature
    from transformers import CompileConfig

    cc = CompileConfig(backend="eager", mode="default")  # dynamo capture, no codegen
    cc._compile_all_devices = True
    return cc, "torch.compile(backend='eager')"


def test_graph_mode_past_the_cap_is_a_row(run, monkeypatch, tmp_path):
    # dynamo's in-process cache is cleared, so the first call must trace again: tracing the
    # tiny LM takes far longer than a 10 ms cap, which therefore always stops it, whatever
    # compiles the traced graph afterwards (dynamo's own eager backend here: inductor's import
    # and start-up, seconds outside the cap, would prove nothing more; the notebook test below
    # stops an inductor compile)
    torch._dynamo.reset()
    monkeypatch.setattr(perf.graph, "graph_config", _eager_backend)
    monkeypatch.setattr(perf.inductor_cache, "FOLDER", tmp_path / "inductor")
    monkeypatch.setattr(run, "settings", Settings(**{**QUICK, "graph_cap_s": 0.01}))
    lat = perf.latency(run)
    sec = perf.modes(run, lat)
    assert sec.table["status"].tolist() == ["measured", "not measured"]
    assert "0.01 s cap" in sec.metrics["graph_problem"]
    assert "cold: 0 files before" in sec.metrics["graph_problem"]
    assert sec.checks == []
    again = perf.hf_generate_fn(run.lm, perf.lm_inputs(run), 4, pad=0)()  # eager still works
    assert again.shape[1] == perf.lm_inputs(run)["input_ids"].shape[1] + 4


def test_graph_mode_measured_with_a_fast_compiler(run, monkeypatch, tmp_path):
    monkeypatch.setattr(perf.graph, "graph_config", _eager_backend)
    monkeypatch.setattr(perf.inductor_cache, "FOLDER", tmp_path / "inductor")
    lat = perf.latency(run)
    sec = perf.modes(run, lat)
    assert sec.table["status"].tolist() == ["measured", "measured"], sec.metrics.get("graph_problem")
    same = next(c for c in sec.checks if "same greedy tokens" in c.name)
    assert same.passed, same.detail
    assert sec.metrics["speedup"] > 0 and sec.metrics["compile_s"] > 0
    assert not hasattr(run.lm, "_compiled_call")  # eager runs afterwards are untouched


def test_attempt_turns_an_exception_into_a_failed_row(tmp_path):
    st = Stage("performance", str(tmp_path), "Performance")

    def broken(x):
        raise RuntimeError("device lost")

    sec = st.attempt("latency", broken, None)
    assert sec.table["status"].tolist() == ["failed"]
    assert "device lost" in sec.table["error"].item()
    assert st.checks[0].passed is False
    assert st.figure("x", lambda s: None, sec) is None


def test_notebook_declares_the_stage_knobs():
    import nbformat

    nb = nbformat.read(paths.NOTEBOOKS / "05_performance.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = {line.split("=")[0].strip() for line in params.source.splitlines() if "=" in line}
    knobs = set(Settings.__dataclass_fields__)
    assert knobs <= names, knobs - names
    assert {"model", "model_dir", "profile", "device", "dtype", "device_map", "seed",
            "run_dir"} <= names


def test_the_stage_runs_in_a_report_and_writes_results(tmp_path):
    """The notebook in a report run of this stage alone (papermill, a kernel forked from the
    run's fork server), its knobs given as `make report` takes them: a real inductor compile
    stopped by the 0.05 s cap, every figure written."""
    from helpers.records import read_result

    knobs = {**QUICK, "sweep_batches": (1, 2), "sweep_prompt_lengths": (8, 32),
             "graph_cap_s": 0.05, "rtf_min_iters": 1, "warmup": 0}
    raw = {f"performance.{k}": ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
           for k, v in knobs.items()}
    cfg = RunConfig.from_strings({**raw, "DEVICE": "cpu", "STAGES": "performance",
                                  "OUT": str(tmp_path)})
    run = run_pipeline(cfg, figures_dir=None, pdf=False)
    res = read_result(run.run_dir / "results" / "performance.json")
    assert res.status == "passed", [c for c in res.checks if c.passed is False]
    assert run.exit_code == 0
    assert res.metrics["latency"]["new_tokens"] == 8
    assert res.metrics["decode_tokens_per_s"] > 0
    assert "0.05 s cap" in res.metrics["modes"]["graph_problem"]
    assert {"performance-sweeps.png", "performance-roofline.png",
            "performance-bandwidth.png"} <= set(res.figures)
    for name in res.figures:
        assert (run.run_dir / "figures" / name).stat().st_size > 1000


def test_headline_marks_timings_unreliable_on_a_busy_host(run, tmp_path, monkeypatch):
    busy = {"host_load_1min": 4.0, "host_logical_cores": 2,
            "host_note": "host busy (load 4.0 on 2 cores, about 2.0 beyond this run): CPU "
                         "timings are inflated and noisy"}
    monkeypatch.setattr(perf.sections, "host_load", lambda: busy)
    frame = perf.headline(Stage("performance", str(tmp_path)), run, [])
    assert frame.iloc[0]["quantity"] == "timings"
    assert frame.iloc[0]["value"].startswith("UNRELIABLE: host busy")
    monkeypatch.setattr(perf.sections, "host_load", lambda: {"host_note": "host quiet"})
    frame = perf.headline(Stage("performance", str(tmp_path)), run, [])
    assert "timings" not in set(frame["quantity"])


# ---- the two decode figures, graph capture verification, the cap between steps -----------------


def test_decode_loop_makes_hf_generates_tokens_on_both_caches_run_after_run(run):
    want = perf.hf_generate_fn(run.lm, perf.lm_inputs(run), 12,
                               pad=generate.pad_id(run.loaded.tokenizer))()[:, -12:]
    p = Protocol(warmup=1, min_iters=3, min_seconds=0.0)
    for static in (False, True):  # the static cache is rewound every run
        t = perf.measure_decode(run, 12, p, static=static)
        assert torch.equal(t.run.output, want) and t.prefill.count == t.run.stats.count == 3
        # prefill and decode are parts of one run: together no longer than the run itself
        assert 0 < t.prefill.mean and t.prefill.mean + t.decode.mean <= t.run.stats.mean


def test_latency_shows_prefill_decode_and_hf_generate_named_for_what_they_time(run):
    lat = perf.latency(run)
    m = lat.metrics
    n = run.settings.new_tokens
    assert m["decode_tokens_per_s"] == pytest.approx((n - 1) / m["decode"]["mean"])
    assert m["static_decode_tokens_per_s"] == pytest.approx(
        (n - 1) / m["static_decode"]["decode"]["mean"])
    assert m["static_decode_same_tokens"] is True and m["hf_generate_same_tokens"] is True
    assert m["ttft_s"] == m["prefill"]["mean"] and m["e2e"]["stats"]["count"] >= 2
    quantities = list(perf.throughput_table(lat)["quantity"])
    loop = next(i for i, q in enumerate(quantities)
                if q.startswith("decode throughput: decode loop, dynamic cache"))
    assert quantities[loop + 1].startswith("decode throughput: decode loop, static cache")
    assert any("HF generate" in q and "comparison" in q for q in quantities)
    assert list(lat.table["measurement"])[0].startswith("time to first token: prefill")
    assert m["hf_generate"]["settled"] in (True, False)  # settle warmup was asked, and said


def test_memory_table_has_one_row_per_device_and_a_total():
    metrics = {"memory": {"host_rss": 2 * 2**20, "peak_rss": 3 * 2**20, "peak_rss_since_reset": None},
               "memory_devices": [
                   {"device": d, "allocated": a * 2**20, "reserved": a * 2**20,
                    "peak_allocated": 2 * a * 2**20, "peak_reserved": 2 * a * 2**20}
                   for d, a in (("cuda:0", 10), ("cuda:1", 5), ("total", 15))]}
    from helpers.stages.kit import Section

    frame = perf.memory_table(Section("latency", None, metrics=metrics))
    peaks = frame[frame["memory"].str.endswith("peak allocated")]
    assert list(peaks["memory"]) == ["device cuda:0: peak allocated", "device cuda:1: peak allocated",
                                     "device total: peak allocated"]
    assert list(peaks["MiB"]) == [20.0, 10.0, 30.0]


def test_preset_quick_skips_the_graph_compile_where_no_device_graph_is_captured(run):
    from helpers.stages.kit import Section

    quick = perf.Run(run.target, run.loaded, Settings(new_tokens=8), placed=run.placed)
    eager = Measurement("e2e", Protocol(), "test", warmup_s=[1.0], samples=[0.5, 0.5],
                        host_samples=[0.5, 0.5], stopped_by="min_iters+min_seconds")
    sec = perf.modes(quick, Section("latency", None, data={"hf_generate": eager}))
    assert "skipped by preset quick" in sec.metrics["graph_problem"]
    assert "preset=thorough" in sec.notes[0] and not sec.checks


def test_graph_mode_is_declined_for_a_model_spread_over_devices(run, monkeypatch):
    import types

    spread = types.SimpleNamespace(spread=True, devices=(torch.device("cuda", 0), torch.device("cuda", 1)))
    monkeypatch.setattr(run, "placed", spread)
    eager = Measurement("e2e", Protocol(), "test", warmup_s=[1.0], samples=[0.5, 0.5],
                        host_samples=[0.5, 0.5], stopped_by="min_iters+min_seconds")
    from helpers.stages.kit import Section

    sec = perf.modes(run, Section("latency", None, data={"hf_generate": eager}))
    assert sec.table["status"].tolist() == ["measured", "not measured"]
    assert "declined" in sec.metrics["graph_problem"] and "cuda:0, cuda:1" in sec.metrics["graph_problem"]
    assert sec.checks == []


def _capture(verified: bool) -> Capture:
    cap = Capture("cuda", True, 1, {}, 0, [], 1, 5)
    if not verified:
        cap.cudagraph_skips = 1
        cap.problems.append("inductor skipped CUDA graphs 1 time(s): mutated inputs")
    return cap


def test_speedup_is_judged_only_for_a_verified_capture(run):
    cuda_run = type("R", (), {"sel": type("S", (), {"backend": "cuda"})(), "loaded": run.loaded})()
    judged = perf.graph._speedup_check(cuda_run, 12.5, _capture(verified=True))
    assert judged.passed is True and judged.threshold == ">= 10.0"
    slow = perf.graph._speedup_check(cuda_run, 1.2, _capture(verified=True))
    assert slow.passed is False
    info = perf.graph._speedup_check(cuda_run, 12.5, _capture(verified=False))
    assert info.passed is None and "not judged" in info.source and "mutated inputs" in info.detail
    assert _capture(False).label == "graph: static cache + torch.compile (capture not verified)"
    assert _capture(True).label == "graph: static cache + CUDA graphs"


def test_step_cap_stops_generate_between_decode_steps(run):
    from transformers import StoppingCriteriaList

    cap = perf.StepCap(1e-9)  # already past the cap when the first step returns
    cap.start()
    fn = perf.hf_generate_fn(run.lm, perf.lm_inputs(run), 8, pad=0,
                          stopping_criteria=StoppingCriteriaList([cap]))
    with pytest.raises(CapReached, match="checked after decode step 1"):
        fn()
    assert cap.steps == 1
    free = perf.StepCap(0)  # 0 = no cap: never stops a run
    fn = perf.hf_generate_fn(run.lm, perf.lm_inputs(run), 8, pad=0,
                          stopping_criteria=StoppingCriteriaList([free]))
    assert fn().shape[1] == perf.lm_inputs(run)["input_ids"].shape[1] + 8 and free.steps >= 7


def test_the_signal_cap_is_used_only_where_no_graph_is_captured():
    from helpers.device.graph import captures_graphs

    assert captures_graphs("cuda") and captures_graphs("npu") and not captures_graphs("cpu")


def test_quick_decode_timing_warms_up_short_and_reads_stability_from_its_steps(run):
    p = Protocol(warmup=1, min_iters=1, min_seconds=0.0, ci=0.5, max_seconds=10.0)
    t = perf.measure_decode(run, 12, p, warm_tokens=4)
    m = t.run
    assert m.warmup_of == "4 tokens" and m.first_full_call_s is None and m.first_call_s > 0
    assert len(m.steps) == 11 * m.stats.count  # every timed run's N - 1 decode steps
    assert m.ci == pytest.approx(bench.ci_half_width(m.steps))
    assert t.run.output.shape == (1, 12) and t.prefill.count == m.stats.count
    whole = perf.measure_decode(run, 12, p.with_(min_iters=1), warm_tokens=0)
    assert whole.run.warmup_of == "" and whole.run.first_full_call_s == whole.run.first_call_s
    assert perf.measure_decode(run, 1, p, length=8).run.steps is None  # a prefill: runs decide
    hf = perf.measure_hf_generate(run, 12, p, warm_tokens=4)  # its steps stamped by a streamer
    assert hf.warmup_of == "4 tokens" and len(hf.steps) == 11 * hf.stats.count
    assert all(x > 0 for x in hf.steps) and sum(hf.steps) < sum(hf.samples)


def test_timer_probe_takes_three_runs_only_when_the_first_is_off(monkeypatch):
    from helpers.stages.performance import sections

    monkeypatch.setattr(sections.time, "sleep", lambda s: None)  # the timer is scripted
    late = sections.timer_probe(_Scripted(0.22), 1)  # 10% late: three runs, their median
    assert late.stats.count == 3 and sections.sleep_error(late) == pytest.approx(0.1)
    assert sections.timer_probe(_Scripted(0.2), 1).stats.count == 1
    assert sections.timer_probe(_Scripted(0.2), 3).stats.count == 3  # thorough: always three


class _Scripted:
    """A backend whose timer reports every run as `seconds` long."""

    timer_protocol = "scripted"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def timer(self):
        seconds = self.seconds

        class _T:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.seconds = self.host_seconds = seconds

        return _T()
