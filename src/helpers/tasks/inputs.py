"""The clips the tasks run on: the shipped fixtures (default) or a user's AUDIO_DIR.

AUDIO_DIR holds audio files (ACCEPTED: .wav and .flac, read with libsndfile) and, optionally,
their transcripts, in one of two forms (both may be present; a .txt file wins):
  <name>.txt        next to <name>.wav / <name>.flac: the transcript, UTF-8, one line or more
  transcripts.tsv   one line per clip: file<TAB>transcript[<TAB>language], '#' starts a comment
A clip without a transcript still runs every task; its stt and vc error rates are "no
transcript", and tts-a speaks the first shipped sentence of the clip's language instead
(data/prompts.json; `spoken`), scored against that sentence. The language is the manifest's third column, else 'zh' when the transcript holds CJK ideographs,
else 'en'.

Every file that cannot be used is a row with the reason (empty, unreadable or not audio, NaN
samples, too short, longer than the speech encoders' 30-s window, a manifest line naming a
file that is not there); the others still run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from helpers import audio
from helpers.errors import AudioError, ConfigError
from helpers.tasks import metrics

ACCEPTED = (".wav", ".flac")
MANIFEST = "transcripts.tsv"
MAX_SECONDS = float(audio.WHISPER_CHUNK_S)  # both recipes' speech encoders see 30-s windows
MAX_SOURCE = ("the speech encoders' window: GLM-4-Voice's WhisperVQ and Covo's Whisper-large-v3 "
              "encoder see 30 s (3000 log-mel frames at 100 Hz) per window")


@dataclass
class TaskClip:
    """One input clip: mono 16 kHz samples for the speech side, its transcript if known."""

    name: str
    path: Path
    origin: str  # "fixture" or "AUDIO_DIR"
    text: str = ""
    language: str = "en"
    samples16: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    error: str = ""  # why it cannot be used ("" = usable)

    @property
    def usable(self) -> bool:
        return not self.error and self.samples16 is not None

    @property
    def seconds(self) -> float:
        return 0.0 if self.samples16 is None else self.samples16.shape[-1] / 16_000

    def samples(self, rate: int) -> np.ndarray:
        """The clip at another rate (read again from the file, as the models' loaders do)."""
        return self.samples16 if rate == 16_000 else audio.load_checked(self.path, sr=rate).samples


def spoken(clip: TaskClip) -> TaskClip:
    """The clip with the text tts-a speaks in a voice: its transcript, or, without one, the
    first sentence of data/prompts.json in the clip's language (English when it has none)."""
    if clip.text:
        return clip
    from helpers.models.base import prompts

    shipped = prompts()
    language = clip.language if clip.language in shipped else "en"
    return replace(clip, text=shipped[language][0], language=language)


def spoken_note(clips: list[TaskClip]) -> list[str]:
    """A note naming the clips tts-a gave a shipped sentence (none when all have text)."""
    lacking = [spoken(c) for c in clips if c.usable and not c.text]
    return [f"tts-a for {c.name} (no transcript) speaks the first data/prompts.json sentence "
            f"of its language ({c.language}): \"{c.text}\"; its round trip is scored against "
            "that sentence" for c in lacking]


def _validated(clip: TaskClip) -> TaskClip:
    try:
        loaded = audio.load_checked(clip.path, sr=16_000)
    except AudioError as exc:
        clip.error = str(exc)
        return clip
    if loaded.duration_s > MAX_SECONDS:
        clip.error = (f"{clip.path.name} lasts {loaded.duration_s:.1f} s, over the "
                      f"{MAX_SECONDS:.0f}-s window ({MAX_SOURCE}): cut it into clips of at most "
                      f"{MAX_SECONDS:.0f} s")
        return clip
    clip.samples16, clip.warnings = loaded.samples, loaded.warnings
    return clip


def fixtures(names: str = "") -> list[TaskClip]:
    """The shipped fixtures (a comma list of names, '' = all), validated."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    chosen = [audio.fixture(n) for n in wanted] if wanted else audio.fixtures()
    return [_validated(TaskClip(f.name, f.path, "fixture", f.text, f.language)) for f in chosen]


def _manifest(folder: Path) -> tuple[dict[str, tuple[str, str]], list[TaskClip]]:
    """transcripts.tsv -> {file name: (text, language)} and a row per unusable line."""
    path = folder / MANIFEST
    if not path.is_file():
        return {}, []
    entries: dict[str, tuple[str, str]] = {}
    bad: list[TaskClip] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            bad.append(TaskClip(f"{MANIFEST}:{number}", path, "AUDIO_DIR",
                                error=f"{MANIFEST} line {number} has no TAB: write "
                                      "file<TAB>transcript[<TAB>language]"))
            continue
        name, text = cols[0].strip(), cols[1].strip()
        lang = cols[2].strip() if len(cols) > 2 and cols[2].strip() else metrics.language_of(text)
        entries[name] = (text, lang)
        if not (folder / name).is_file():
            bad.append(TaskClip(Path(name).stem, folder / name, "AUDIO_DIR", text, lang,
                                error=f"{MANIFEST} line {number} names {name}, which is not in "
                                      f"{folder}: add the file or remove the line"))
    return entries, bad


def from_dir(folder: str | Path) -> list[TaskClip]:
    """Every audio file of AUDIO_DIR (sorted), with its transcript; unusable files are rows."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"AUDIO_DIR={folder} is not a folder",
                          "give a folder of .wav / .flac files (optionally <name>.txt "
                          f"transcripts or a {MANIFEST}), or leave AUDIO_DIR empty for the "
                          "shipped fixtures")
    manifest, clips = _manifest(root)
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in ACCEPTED)
    others = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower()
                    not in (*ACCEPTED, ".txt", ".tsv") and not p.name.startswith("."))
    for p in files:
        text, lang = manifest.get(p.name, ("", ""))
        txt = p.with_suffix(".txt")
        if txt.is_file():
            text = txt.read_text(encoding="utf-8", errors="replace").strip()
            lang = ""
        clips.append(_validated(TaskClip(p.stem, p, "AUDIO_DIR", text,
                                         lang or metrics.language_of(text))))
    clips += [TaskClip(Path(n).stem, root / n, "AUDIO_DIR",
                       error=f"{n}: not a {' or '.join(ACCEPTED)} file; convert it, e.g. "
                             "`ffmpeg -i in.m4a -ar 16000 -ac 1 out.wav`") for n in others]
    if not files:
        clips.append(TaskClip("(none)", root, "AUDIO_DIR",
                              error=f"AUDIO_DIR {root} holds no {' / '.join(ACCEPTED)} file"))
    return clips


def clips(audio_dir: str = "", names: str = "") -> list[TaskClip]:
    """AUDIO_DIR's clips when set, else the shipped fixtures."""
    return from_dir(audio_dir) if audio_dir else fixtures(names)
