"""What the reader sees and hears of a clip: waveform and log-mel figures, and HTML players
(WAV and PNG as base64 data URIs, so the report is one offline file)."""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from helpers import audio

DPI = 96  # the players' figures (their PNGs are embedded in the report)


def show_mel(ax: Any, mel: np.ndarray, spec: audio.MelSpec, title: str = "", cmap: str = "magma",
             **imshow: Any) -> Any:
    """Draw a [n_mels, frames] log-mel on `ax` with time in seconds; returns the image."""
    seconds = mel.shape[-1] * spec.hop_length / spec.sample_rate
    img = ax.imshow(mel, origin="lower", aspect="auto", cmap=cmap, interpolation="nearest",
                    extent=(0.0, seconds, 0, mel.shape[0]), **imshow)
    ax.set_ylabel("mel bin")
    ax.set_xlabel("time (s)")
    ax.grid(False)
    if title:
        ax.set_title(title)
    return img


def waveform_mel_figure(x: np.ndarray, sr: int, title: str = "",
                        spec: audio.MelSpec | None = None) -> tuple[Any, Any]:
    """Waveform above its log-mel (spec default: Whisper, the audio resampled to 16 kHz)."""
    from helpers import plots

    spec = spec or audio.WHISPER
    mono = audio.mix_to_mono(np.asarray(x, dtype=np.float32))
    mel = audio.log_mel(audio.resample(mono, sr, spec.sample_rate), spec).numpy()
    fig, (ax_wave, ax_mel) = plots.stacked(2, height=4.2)
    ax_wave.plot(np.arange(mono.shape[0]) / sr, mono, linewidth=0.5)
    ax_wave.set_ylabel("amplitude")
    ax_wave.set_title(title or f"{mono.shape[0] / sr:.2f} s at {sr} Hz")
    img = show_mel(ax_mel, mel, spec)
    plots.colorbar(img, ax_mel, f"log-mel ({spec.name})")
    return fig, (ax_wave, ax_mel)


def waveform_png(x: np.ndarray, sr: int) -> str:
    """waveform_mel_figure(x, sr) as a base64 PNG (titled with its length and rate: the
    player's caption is printed under it), drawn once for equal samples and rate (cached_png:
    a clip heard by two tasks, an output equal to the last run's)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    png = cached_png(("waveform", x.shape, sr), [x],
                     lambda: base64.b64decode(png_base64(waveform_mel_figure(x, sr)[0])))
    return base64.b64encode(png).decode("ascii")


def cached_png(what: Any, arrays: Sequence[np.ndarray], draw: Callable[[], bytes],
               drawn_by: Sequence[str] = ()) -> bytes:
    """The PNG bytes `draw` makes, drawn once for equal `what` (a repr-able description),
    array contents, figure language and drawing code (this module's, helpers.plots', and the
    files `drawn_by`): kept in the figure cache, which keeps the KEPT_PNGS newest."""
    from helpers import plots

    code = [_drawing(plots.LANGUAGE), *(_source(f) for f in drawn_by)]
    key = hashlib.sha256(repr((what, plots.LANGUAGE, code)).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        key.update(repr((a.shape, a.dtype.str)).encode())
        key.update(a.tobytes())
    path = figure_cache() / f"{key.hexdigest()}.png"
    try:
        found = path.read_bytes()
        os.utime(path)  # kept as recently used
        return found
    except OSError:
        pass
    png = draw()
    try:  # best effort: a cache that cannot be written only costs the drawing next time
        _keep(path, png)
    except OSError:
        pass
    return png


FIGURE_CACHE_ENV = "HELPERS_FIGURE_CACHE"
KEPT_PNGS = 256  # waveform figures kept in the figure cache (about 60 KiB each)


def figure_cache() -> Path:
    """The figure cache: $HELPERS_FIGURE_CACHE, else <repo>/.cache/figures."""
    from helpers import paths

    return Path(os.environ.get(FIGURE_CACHE_ENV) or paths.ROOT / ".cache" / "figures")


def _keep(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all, then drop the oldest files past KEPT_PNGS."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    kept = sorted((t, p) for p in path.parent.glob("*.png") if (t := _mtime(p)) is not None)
    for _, old in kept[:-KEPT_PNGS]:
        old.unlink(missing_ok=True)


def _mtime(path: Path) -> float | None:
    """A file's mtime; None when another process removed it meanwhile."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


@functools.cache
def _source(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.cache
def _drawing(lang: str) -> str:
    """What a cached figure was drawn by: the source of this module, helpers.plots and
    helpers.audio (the log-mel), the language's message catalog, and the matplotlib and Pillow
    versions (a change to any draws the figures again)."""
    import matplotlib
    import PIL

    from helpers import i18n, plots

    files = [Path(m.__file__) for m in (sys.modules[__name__], plots, audio)]
    if lang != "en":
        files.append(i18n.catalog_path(lang))
    code = b"".join(p.read_bytes() for p in files if p.is_file())
    return f"{hashlib.sha256(code).hexdigest()} {matplotlib.__version__} {PIL.__version__}"


def wav_base64(x: np.ndarray, sr: int) -> str:
    """[T] or [C, T] float audio as a base64 PCM_16 WAV (clipped to [-1, 1])."""
    data = np.clip(np.asarray(x, dtype=np.float32), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, data.T if data.ndim == 2 else data, sr, subtype="PCM_16", format="WAV")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def png_base64(fig: Any, dpi: int = DPI, colors: int | None = 256) -> str:
    """A matplotlib figure as a base64 PNG (plots.drawn: cropped as savefig's
    bbox_inches="tight" crops); the figure is closed (not shown twice).

    colors: quantize to an indexed palette of this many colors (a log-mel image drops from
    about 140 KiB to 60 KiB at 256 colors with no visible change); None keeps RGBA.
    """
    import matplotlib.pyplot as plt

    from helpers import plots

    plots.translate(fig)
    image = plots.drawn(fig, dpi)
    plt.close(fig)
    return image_base64(image, colors)


def image_base64(image: Any, colors: int | None = 256, scale: float = 1.0) -> str:
    """A PIL image as a base64 PNG, resized by `scale` and quantized to `colors` (None: kept)."""
    from PIL import Image

    if scale != 1.0:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    if colors:
        image = image.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT,
                                              dither=Image.Dither.NONE)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _listening_copy(x: np.ndarray, normalize: bool) -> tuple[np.ndarray, str]:
    """What the player plays, and a note on how it differs from the computed samples."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if normalize and peak > 0:
        return x * (10 ** (-1 / 20) / peak), " (peak-normalized to -1 dBFS for listening)"
    if peak > 1.0:
        return x, f" (peak {peak:.2f} clipped to full scale for listening)"
    return x, ""


def player_html(x: np.ndarray, sr: int, caption: str, fig: Any = None,
                normalize: bool = False, figure_on_screen: bool = False,
                png: str = "") -> str:
    """HTML for one clip: an embedded <audio> player on screen, its figure in print.

    The WAV is a base64 data URI (no file links, no network). The figure: `png` (a base64
    PNG drawn already), else `fig`, else waveform_png(x, sr); the report's CSS hides
    .print-only on screen and .screen-only in print. figure_on_screen=True shows the figure in
    both media (the player above it on screen only), for a figure the reader needs next to the
    sound.
    """
    x = np.asarray(x, dtype=np.float32)
    audio, note = _listening_copy(x, normalize)
    from helpers import plots

    if not png:
        png = png_base64(fig) if fig is not None else waveform_png(x, sr)
    text = html.escape(plots.text(caption) + (" " + plots.text(note.strip()) if note else ""))
    img = f'<img alt="{text}" src="data:image/png;base64,{png}">'
    sound = (f'<audio controls preload="metadata" '
             f'src="data:audio/wav;base64,{wav_base64(audio, sr)}"></audio>')
    if figure_on_screen:
        return (f'<figure class="audio-clip"><div class="screen-only">{sound}</div>{img}'
                f'<figcaption>{text}</figcaption></figure>')
    return (
        '<figure class="audio-clip">'
        f'<div class="screen-only">{sound}<figcaption>{text}</figcaption></div>'
        f'<div class="print-only">{img}<figcaption>{text}</figcaption></div>'
        '</figure>'
    )


def player(x: np.ndarray, sr: int, caption: str, fig: Any = None,
           normalize: bool = False, figure_on_screen: bool = False, png: str = "") -> Any:
    """An IPython display object of player_html(...) for a notebook cell."""
    from IPython.display import HTML

    return HTML(player_html(x, sr, caption, fig=fig, normalize=normalize,
                            figure_on_screen=figure_on_screen, png=png))


def players(clips: Sequence[tuple[np.ndarray, int, str]], normalize: bool = False) -> Any:
    """Several players side by side (e.g. device and CPU output of one component)."""
    from IPython.display import HTML

    cells = "".join(f'<div style="flex:1 1 0;min-width:18em">'
                    f"{player_html(x, sr, cap, normalize=normalize)}</div>"
                    for x, sr, cap in clips)
    return HTML(f'<div class="audio-row" style="display:flex;gap:1em;flex-wrap:wrap">{cells}</div>')

