"""The accuracy-parity stage's knobs, each with its help; notebook 04's parameters cell
mirrors them (tests/test_settings.py)."""

from __future__ import annotations

from dataclasses import dataclass

from helpers.knobs import setting


@dataclass(frozen=True)
class Settings:
    reference_dtype: str = setting("float32", "CPU reference: float32 or float64")
    golden: str = setting("auto", "float64 golden: auto (when it fits in memory), on, off")
    new_tokens: int = setting(0, "greedy tokens per prompt; 0 means auto: 8 on the tiny "
                                 "profile, 64 otherwise")
    languages: str = setting("en,zh", "prompt sets of data/prompts.json")
    tf32: bool = setting(False, "allow TF32 (CUDA) / HF32 (Ascend) in float32 parity")
    fixtures: str = setting("", "audio fixtures for the per-fixture component comparison; "
                                "empty: all")
    players: str = setting("en_fox,zh_weather,en_stereo_48k", "fixtures given players")
    decode_batch: int = setting(0, "prompts decoded together in one left-padded batch, every "
                                   "side alike; 0: all of them, 1: each on its own")
    component_dtype: str = setting("run", "run: every component in DTYPE; upstream: as "
                                          "upstream runs each (BiCodec float16 on CUDA)")
