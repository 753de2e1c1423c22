"""The performance stage's knobs and the constants its measurements rest on."""

from __future__ import annotations

from dataclasses import dataclass, fields

from helpers.bench import Protocol
from helpers.errors import ConfigError
from helpers.knobs import setting

MIB = 1024 * 1024
GPA_REPORT = "GPA on Ascend 910 adaptation report (128-token latency, 26.1 tok/s)"
# Audio rates of the inputs the recipes feed their audio components (log-mel frame rates are
# fixed by the front end; waveform and vocoder rates are read from the module's config).
WHISPER_FRAMES_PER_S = 100.0  # log-mel hop 160 samples at 16 kHz (Whisper front end)
WHISPER_POSITIONS_PER_S = 50.0  # Whisper encoder output: 1500 positions per 30 s
DEFAULT_WAVEFORM_RATE = 16_000  # 16 kHz mono input audio (GPA, Covo encoders)
MATMUL_RUN_S = 0.02  # one product of the compute-roof matmul takes at least this long (20 ms:
# far above the timer's resolution; FLOP/s of a CPU matmul change little past n = 1024)
CACHE_SIZED = 64 * MIB  # weights below this may stay in on-chip caches (L2 / last level)
PRESETS = ("quick", "thorough")
# What preset=thorough sets in place of the quick defaults (a knob given explicitly wins):
# the fixed repetition counts and durations the stage used before it stopped on a stable mean,
# a warmup that goes on until two consecutive runs agree, and the comparison rows (static cache,
# HF generate) timed like the headline.
THOROUGH = {"min_iters": 5, "min_seconds": 0.5, "max_seconds": 60.0, "max_warmup": 10,
            "settle_tol": 0.05, "compare_min_iters": 5, "ci": 0.0, "sweep_min_iters": 3,
            "sweep_min_seconds": 0.2, "sweep_max_seconds": 60.0, "rtf_min_iters": 2,
            "warmup_tokens": 0, "sleep_min_iters": 3}
SLEEP_S = 0.2  # the timer's sanity probe: a sleep of known length
SLEEP_TOL = 0.05  # ... measured within 5% (optimum-benchmark checks a 1 s sleep at +/-10%)
SLEEP_RETRY = 3  # runs (their median) when fewer were off by more than SLEEP_TOL


@dataclass(frozen=True)
class Settings:
    """The stage's knobs, each with its help; notebook 05's parameters cell mirrors them
    (tests/test_settings.py). Validated on construction."""

    preset: str = setting("quick", "timing protocol: quick stops once the mean is stable (ci); "
                                   "thorough: the fixed counts noted below (real hardware)")
    new_tokens: int = setting(128, "tokens per end-to-end run (the GPA report's 128)")
    warmup: int = setting(1, "minimum warmup runs of the headline measurements")
    settle_tol: float = setting(0.0, "warm up until two consecutive runs agree within this "
                                     "fraction (0 = off; thorough: 0.05)")
    max_warmup: int = setting(4, "at most this many warmup runs (thorough: 10)")
    min_iters: int = setting(1, "timed runs of a headline measurement: at least this many "
                                "(thorough: 5); a decode run's steps judge its stability")
    compare_min_iters: int = setting(1, "timed runs of a comparison row (static cache, HF "
                                        "generate): at least this many (thorough: 5)")
    warmup_tokens: int = setting(8, "tokens of each warmup run of a comparison row or batch "
                                    "sweep point (0 = as many as a timed run; thorough: 0); "
                                    "the headline's warmup is always a whole run")
    sleep_min_iters: int = setting(1, "runs of the timer's 0.2 s sleep probe: at least this "
                                      "many, 3 when the first is off by more than 5% "
                                      "(thorough: 3)")
    min_seconds: float = setting(0.0, "and at least this long in all (thorough: 0.5)")
    ci: float = setting(0.05, "and until the mean's 95% CI is within this fraction of it "
                              "(0 = off; thorough: 0)")
    max_iters: int = setting(200, "timed runs: at most this many")
    max_seconds: float = setting(0.5, "timed runs: at most this long in all (thorough: 60)")
    sweep_min_iters: int = setting(1, "timed runs per sweep point: at least this many "
                                      "(thorough: 3)")
    sweep_min_seconds: float = setting(0.0, "and at least this long in all (thorough: 0.2)")
    sweep_max_seconds: float = setting(0.15, "and at most this long in all (thorough: 60)")
    sweep_batches: tuple[int, ...] = setting((1, 2, 4, 8), "batch sizes of the batch sweep")
    sweep_prompt_lengths: tuple[int, ...] = setting((16, 64, 256, 1024),
                                                    "prompt lengths of the prefill sweep")
    sweep_new_tokens: int = setting(16, "tokens per run of the batch sweep")
    rtf_min_iters: int = setting(1, "timed runs per audio component: at least this many "
                                    "(thorough: 2)")
    graph_mode: bool = setting(True, "measure graph mode (static cache + graph capture) too "
                                     "(preset quick: where it captures device graphs)")
    graph_cap_s: float = setting(0.0, "cap on the first graph-mode call (compile), seconds; "
                                      "0 = auto per backend")
    copy_mib: int = setting(256, "size of the bandwidth copy, MiB")

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got "
                              f"{self.preset!r}")
        if self.preset == "thorough":
            defaults = {f.name: f.default for f in fields(self)}
            for name, value in THOROUGH.items():
                if getattr(self, name) == defaults[name]:  # a knob given explicitly wins
                    object.__setattr__(self, name, value)
        for name in ("sweep_batches", "sweep_prompt_lengths"):
            value = tuple(getattr(self, name))
            if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                    for v in value):
                raise ConfigError(f"{name} must be a non-empty list of integers >= 1, got {value!r}")
            object.__setattr__(self, name, value)
        for name in ("new_tokens", "sweep_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ConfigError(f"{name} must be an integer >= 2, got {value!r} (decode "
                                "throughput needs at least one token after the first)")
        if isinstance(self.copy_mib, bool) or not isinstance(self.copy_mib, int) \
                or self.copy_mib < 1:
            raise ConfigError(f"copy_mib must be an integer >= 1 (MiB), got {self.copy_mib!r}")
        for name, low in (("warmup_tokens", 0), ("sleep_min_iters", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.graph_cap_s, (int, float)) or self.graph_cap_s < 0:
            raise ConfigError(f"graph_cap_s must be seconds >= 0 (0 = auto), got {self.graph_cap_s!r}")
        self.protocol()  # validates the protocol knobs
        self.compare_protocol()
        self.sweep_protocol()
        self.rtf_protocol()

    def skipped(self) -> str:
        """What this protocol leaves out next to protocol=thorough, in one sentence."""
        if self.preset == "thorough":
            return "preset thorough: fixed repetition counts, nothing skipped"
        return (f"preset quick: each figure stops once its mean's 95% confidence interval is "
                f"within +/-{self.ci:.0%} (a decode run's mean step over its N - 1 steps, so "
                f"one run can do; at least {self.min_iters} run(s), comparison rows "
                f"{self.compare_min_iters}, sweep points {self.sweep_min_iters}, audio "
                f"components {self.rtf_min_iters}; runs added for "
                f"a stable mean stop once {self.max_seconds:g} s of timed work is reached, "
                f"{self.sweep_max_seconds:g} s for a sweep point: each figure says how stable "
                f"it got), {self._warmup_text()}{self._short_warmup_text()}, the timer's "
                f"{SLEEP_S:g} s sleep probe {self.sleep_min_iters} run(s) ({SLEEP_RETRY} when "
                f"off by more than {SLEEP_TOL:.0%}), and graph mode only where it captures "
                f"device graphs; `performance.preset=thorough` times {THOROUGH['min_iters']}+ runs and "
                f"{THOROUGH['min_seconds']:g}+ s per figure, comparison rows included (sweep "
                f"points {THOROUGH['sweep_min_iters']}+ and {THOROUGH['sweep_min_seconds']:g}+ "
                f"s), warms up until two consecutive runs agree within "
                f"{THOROUGH['settle_tol']:.0%} (up to {THOROUGH['max_warmup']} runs) with "
                f"whole runs, times the sleep probe {THOROUGH['sleep_min_iters']} times and "
                "measures graph mode on every backend, as for real hardware")

    def _short_warmup_text(self) -> str:
        if not self.warmup_tokens:
            return ""
        return (f"; the comparison rows' and batch sweep points' warmup runs decode "
                f"{self.warmup_tokens} tokens, not a whole run (their first call is not shown)")

    def _warmup_text(self) -> str:
        if self.settle_tol > 0:
            return (f"warmup until two consecutive runs agree within {self.settle_tol:.0%} (at "
                    f"most {self.max_warmup} runs)")
        return f"{self.warmup} warmup run(s) kept apart, not repeated until they agree"

    def protocol(self) -> Protocol:
        return Protocol(warmup=self.warmup, min_iters=self.min_iters,
                        min_seconds=self.min_seconds, max_iters=self.max_iters,
                        max_seconds=self.max_seconds, settle=self.settle_tol,
                        max_warmup=self.max_warmup, ci=self.ci)

    def compare_protocol(self) -> Protocol:
        """The comparison rows' protocol: the headline's, with their own minimum count."""
        return self.protocol().with_(min_iters=self.compare_min_iters,
                                     max_iters=max(self.max_iters, self.compare_min_iters))

    def rtf_protocol(self) -> Protocol:
        return self.sweep_protocol().with_(min_iters=self.rtf_min_iters,
                                           max_iters=max(self.max_iters, self.rtf_min_iters))

    def sweep_protocol(self) -> Protocol:
        return Protocol(warmup=self.warmup, min_iters=self.sweep_min_iters,
                        min_seconds=self.sweep_min_seconds,
                        max_iters=max(self.max_iters, self.sweep_min_iters),
                        max_seconds=self.sweep_max_seconds, ci=self.ci)
