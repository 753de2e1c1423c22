"""What one task wrote on one side, and the comparison of the target's with the reference's."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from helpers import bench
from helpers.device import Backend

TRAJECTORY_STEPS = 64  # steps per output whose logits are kept for teacher-forced parity


@dataclass
class TaskOutput:
    """One task on one clip on one side, on the host.

    Timings (helpers.bench.Clock: the host clock from a synchronized start):
    first_token_s from the start of the task (its audio tokenization included) to the first
    generated id; first_audio_s to the first playable chunk (see the task's module); seconds
    the whole task, decoding to a waveform included.
    """

    task: str
    clip: str
    prompt: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    stopped: str = ""
    wave: np.ndarray | None = None
    rate: int = 0
    semantic: list[int] = field(default_factory=list)  # the audio ids the waveform is made of
    first_token_s: float = math.nan
    first_audio_s: float = math.nan
    seconds: float = math.nan
    audio_in_s: float = 0.0
    audio_out_s: float = 0.0
    sampling: str = ""
    voice: str = ""  # the reference clip of tts-a / vc
    roundtrip: str | None = None  # the model's own transcript of its output (None: not asked)
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # [N, V] host logits of the generated steps (at most TRAJECTORY_STEPS): the reference's own,
    # or the target's fed the reference's prompt and ids (teacher forcing)
    steps: Any = field(default=None, repr=False)

    # saved outputs (helpers.outputs): the ids, waveform and step logits as tensors, the rest JSON
    SAVED_LISTS = ("prompt", "tokens", "semantic")
    SAVED_FIELDS = ("task", "clip", "text", "stopped", "rate", "first_token_s", "first_audio_s",
                    "seconds", "audio_in_s", "audio_out_s", "sampling", "voice", "roundtrip",
                    "error", "extra")

    def saved(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(tensors by field, JSON fields): what is kept of this output."""
        import torch

        tensors = {f: torch.tensor(getattr(self, f), dtype=torch.int64)
                   for f in self.SAVED_LISTS}
        if self.wave is not None:
            tensors["wave"] = torch.from_numpy(np.ascontiguousarray(self.wave))
        if self.steps is not None:
            tensors["steps"] = self.steps
        return tensors, {f: getattr(self, f) for f in self.SAVED_FIELDS}

    @classmethod
    def from_saved(cls, tensors: dict[str, Any], fields: dict[str, Any]) -> TaskOutput:
        """The output `saved` gave (tensors by field, JSON fields)."""
        out = cls(**fields, **{f: tensors[f].tolist() for f in cls.SAVED_LISTS})
        wave = tensors.get("wave")
        out.wave = None if wave is None else wave.numpy()
        out.steps = tensors.get("steps")
        return out

    @property
    def key(self) -> tuple[str, str]:
        return self.task, self.clip

    @property
    def rtf(self) -> float:
        """End-to-end real-time factor: task seconds over the audio it writes (or, for a text
        output, the audio it hears); below 1 is faster than real time."""
        return bench.rtf(self.seconds, self.audio_out_s or self.audio_in_s)

    def record(self) -> dict[str, Any]:
        """JSON values (no arrays)."""
        return {"task": self.task, "clip": self.clip, "prompt_tokens": len(self.prompt),
                "tokens": len(self.tokens), "text": self.text, "stopped": self.stopped,
                "audio_tokens": len(self.semantic), "first_token_s": self.first_token_s,
                "first_audio_s": self.first_audio_s, "seconds": self.seconds,
                "audio_in_s": self.audio_in_s, "audio_out_s": self.audio_out_s,
                "rtf": self.rtf, "sampling": self.sampling, "voice": self.voice,
                "roundtrip": self.roundtrip, "error": self.error}


def first_chunk_seconds(count: int, chunk: int, whole_s: float, decode_chunk: Callable[[], Any],
                        be: Backend | None = None) -> float:
    """Seconds a streaming server takes to turn its first `chunk` audio ids into sound.

    With `count` ids in all, an output of one chunk or less was that chunk: its decoding
    (`whole_s`) is not done twice. A longer one decodes its first chunk again, timed here.
    """
    if count <= chunk:
        return whole_s
    clock = bench.Clock(be)
    clock.start()
    decode_chunk()
    return clock.stamp()
