"""The performance stage's knobs and the constants its measurements rest on."""

from __future__ import annotations

from dataclasses import dataclass

from helpers.bench import Protocol
from helpers.errors import ConfigError

MIB = 1024 * 1024
GPA_REPORT = "GPA on Ascend 910 adaptation report (128-token latency, 26.1 tok/s)"
# Audio rates of the inputs the recipes feed their audio components (log-mel frame rates are
# fixed by the front end; waveform and vocoder rates are read from the module's config).
WHISPER_FRAMES_PER_S = 100.0  # log-mel hop 160 samples at 16 kHz (Whisper front end)
WHISPER_POSITIONS_PER_S = 50.0  # Whisper encoder output: 1500 positions per 30 s
DEFAULT_WAVEFORM_RATE = 16_000  # 16 kHz mono input audio (GPA, Covo encoders)
MATMUL_RUN_S = 0.05  # one product of the compute-roof matmul takes at least this long
CACHE_SIZED = 64 * MIB  # weights below this may stay in on-chip caches (L2 / last level)





@dataclass(frozen=True)
class Settings:
    """The stage's knobs (notebook parameters); validated on construction."""

    new_tokens: int = 128  # tokens per end-to-end run (the GPA report's 128)
    warmup: int = 1  # minimum warmup runs of the headline measurements ...
    settle_tol: float = 0.05  # ... then on until two consecutive runs agree within this (0 = off)
    max_warmup: int = 10  # ... at most this many warmup runs
    min_iters: int = 5
    min_seconds: float = 0.5
    max_iters: int = 200
    max_seconds: float = 60.0
    sweep_min_iters: int = 3
    sweep_min_seconds: float = 0.2
    sweep_batches: tuple[int, ...] = (1, 2, 4, 8)
    sweep_prompt_lengths: tuple[int, ...] = (16, 64, 256, 1024)
    sweep_new_tokens: int = 16
    rtf_min_iters: int = 2  # audio components can be slow on a CPU: fewer timed runs
    graph_mode: bool = True
    graph_cap_s: float = 0.0  # cap on the first graph-mode call (compile); 0 = auto per backend
    copy_mib: int = 256  # size of the bandwidth copy, MiB

    def __post_init__(self) -> None:
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
        if not isinstance(self.graph_cap_s, (int, float)) or self.graph_cap_s < 0:
            raise ConfigError(f"graph_cap_s must be seconds >= 0 (0 = auto), got {self.graph_cap_s!r}")
        self.protocol()  # validates the protocol knobs
        self.sweep_protocol()
        self.rtf_protocol()

    def protocol(self) -> Protocol:
        return Protocol(warmup=self.warmup, min_iters=self.min_iters,
                        min_seconds=self.min_seconds, max_iters=self.max_iters,
                        max_seconds=self.max_seconds, settle=self.settle_tol,
                        max_warmup=self.max_warmup)

    def rtf_protocol(self) -> Protocol:
        return self.sweep_protocol().with_(min_iters=self.rtf_min_iters,
                                           max_iters=max(self.max_iters, self.rtf_min_iters))

    def sweep_protocol(self) -> Protocol:
        return Protocol(warmup=self.warmup, min_iters=self.sweep_min_iters,
                        min_seconds=self.sweep_min_seconds,
                        max_iters=max(self.max_iters, self.sweep_min_iters),
                        max_seconds=self.max_seconds)
