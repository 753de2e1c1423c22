"""Regenerate the shipped speech fixtures in data/audio/ with espeak-ng (`make data`).

Each utterance is synthesized by espeak-ng with fixed options (voice, speed, pitch, amplitude,
word gap), so the output is deterministic for a given espeak-ng version. The 22.05 kHz
synthesis is trimmed to the voiced span plus a short margin, resampled with soxr (VHQ),
peak-normalized to -3 dBFS and written as 16 kHz mono PCM_16 WAV. One English sentence is also
written as 48 kHz stereo PCM_24 FLAC (the Covo-Audio-Chat release's test clips are 48 kHz 24-bit),
its right channel delayed by 0.5 ms and attenuated by 3 dB so that a mix-down is a real mix.
FLAC keeps the folder under 1 MB and exercises the second container the loader reads.

The report and the tests only read the shipped files and data/audio/fixtures.json; they never
need espeak-ng.

    python scripts/make_audio_fixtures.py [--out data/audio]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parents[1]
ESPEAK_OPTIONS = ["-s", "165", "-p", "50", "-a", "100", "-g", "2"]  # words/min, pitch, amplitude, gap
PEAK_DBFS = -3.0
MARGIN_S = 0.12          # silence kept before and after the voiced span
VOICED_DBFS = -40.0      # a sample above this level counts as voiced when trimming
DURATION_RANGE_S = (1.5, 4.0)
STEREO_DELAY_SAMPLES = 24     # 0.5 ms at 48 kHz
STEREO_GAIN = 10 ** (-3 / 20)  # -3 dB on the right channel

# Mandarin voice. espeak-ng 1.51's plain "cmn" voice turns Hanzi into pinyin with tone digits
# and then reads them as English ("jin one tian one ..."); its "cmn-latn-pinyin" variant reads
# the same Hanzi as Mandarin syllables with tones and tone sandhi (check with `espeak-ng -x`).
ZH_VOICE = "cmn-latn-pinyin"

# (name, espeak-ng voice, language, text, sample_rate, channels, subtype, container)
UTTERANCES = [
    ("en_fox", "en-us", "en", "The quick brown fox jumps over the lazy dog.", 16000, 1, "PCM_16", "WAV"),
    ("en_stella", "en-us", "en", "Please call Stella and bring these things.", 16000, 1, "PCM_16", "WAV"),
    ("en_paris", "en-us", "en", "How is the weather in Paris today?", 16000, 1, "PCM_16", "WAV"),
    ("zh_weather", ZH_VOICE, "zh", "今天天气很好。", 16000, 1, "PCM_16", "WAV"),
    ("zh_ai", ZH_VOICE, "zh", "人工智能改变世界。", 16000, 1, "PCM_16", "WAV"),
    ("zh_station", ZH_VOICE, "zh", "请问火车站在哪里？", 16000, 1, "PCM_16", "WAV"),
    ("en_stereo_48k", "en-us", "en", "This clip was recorded in stereo.", 48000, 2, "PCM_24", "FLAC"),
]


def espeak(text: str, voice: str, workdir: Path) -> tuple[np.ndarray, int]:
    """Synthesize `text`; returns float64 mono samples [T] and espeak-ng's rate (22050 Hz)."""
    out = workdir / "utterance.wav"
    cmd = ["espeak-ng", "-v", voice, *ESPEAK_OPTIONS, "-w", str(out), text]
    subprocess.run(cmd, check=True, capture_output=True)
    x, sr = sf.read(out, dtype="float64")
    return x, sr


def trim(x: np.ndarray, sr: int) -> np.ndarray:
    """Keep the voiced span plus MARGIN_S on each side."""
    voiced = np.flatnonzero(np.abs(x) > 10 ** (VOICED_DBFS / 20))
    margin = int(MARGIN_S * sr)
    start, stop = max(voiced[0] - margin, 0), min(voiced[-1] + margin + 1, len(x))
    return x[start:stop]


def to_rate(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample with soxr and normalize the peak to PEAK_DBFS."""
    y = soxr.resample(x, sr_in, sr_out, quality="VHQ")
    return y * (10 ** (PEAK_DBFS / 20) / np.abs(y).max())


def stereo(x: np.ndarray) -> np.ndarray:
    """[T] -> [T, 2]: left is x, right is x delayed and attenuated."""
    right = np.concatenate([np.zeros(STEREO_DELAY_SAMPLES), x[:-STEREO_DELAY_SAMPLES]])
    return np.stack([x, STEREO_GAIN * right], axis=1)


def espeak_version() -> str:
    res = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True)
    return res.stdout.split("Data at")[0].strip()  # drop the machine-specific data path


def build(out_dir: Path) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, voice, lang, text, sr, channels, subtype, container in UTTERANCES:
            x, sr_in = espeak(text, voice, Path(tmp))
            y = to_rate(trim(x, sr_in), sr_in, sr)
            data = stereo(y) if channels == 2 else y
            file = f"{name}.{container.lower()}"
            sf.write(out_dir / file, data, sr, subtype=subtype, format=container)
            info = sf.info(out_dir / file)
            duration = info.frames / info.samplerate
            lo, hi = DURATION_RANGE_S
            if not lo <= duration <= hi:
                raise SystemExit(f"{file}: {duration:.2f} s is outside {lo}-{hi} s; shorten "
                                 f"or lengthen its text in UTTERANCES")
            rows.append({
                "name": name, "file": file, "language": lang, "text": text, "voice": voice,
                "sample_rate": info.samplerate, "channels": info.channels,
                "subtype": info.subtype, "format": info.format, "frames": info.frames,
                "duration_s": round(duration, 4),
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "audio",
                    help="folder that receives the audio files and fixtures.json")
    args = ap.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed: `apt-get install espeak-ng` (Debian/Ubuntu) or "
              "`brew install espeak-ng`; the shipped fixtures in data/audio/ need no regeneration",
              file=sys.stderr)
        return 2
    rows = build(args.out)
    meta = {
        "generator": {
            "tool": espeak_version(), "options": " ".join(ESPEAK_OPTIONS),
            "script": "scripts/make_audio_fixtures.py", "resampler": "soxr VHQ",
            "peak_dbfs": PEAK_DBFS,
            "stereo": f"right channel delayed {STEREO_DELAY_SAMPLES} samples, -3 dB",
        },
        "fixtures": rows,
    }
    (args.out / "fixtures.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
    total = sum((args.out / r["file"]).stat().st_size for r in rows)
    for r in rows:
        print(f"{r['file']:22s} {r['language']} {r['duration_s']:5.2f} s  {r['text']}")
    print(f"{len(rows)} fixtures, {total / 1024:.0f} KiB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
