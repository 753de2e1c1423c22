"""torch.compile's on-disk cache in the project's own folder, and the cleanup after a compile
cut short: inductor links a kernel library straight to its final path, so a stopped linker
leaves an empty or truncated .so that a later run would load (ELF section-table check)."""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

from helpers import paths

FOLDER = paths.ROOT / ".cache" / "inductor"  # torch.compile artifacts; gitignored

@contextlib.contextmanager
def use(folder: Path) -> Iterator[int]:
    """Inductor's on-disk cache in the project's own folder for the block; yields its file count.

    A compile cut short by the cap can leave a truncated artifact that later runs would load;
    in a folder of our own it can be removed without touching anyone else's cache, and a later
    report run finds the complete artifacts of earlier ones (a warm cache, said in the report).
    """
    folder.mkdir(parents=True, exist_ok=True)
    before = sum(1 for f in folder.rglob("*") if f.is_file())
    try:
        from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir
    except ImportError:  # older torch: the environment variable alone
        temporary_cache_dir = _env_cache_dir
    with temporary_cache_dir(str(folder)):
        yield before


@contextlib.contextmanager
def _env_cache_dir(folder: str) -> Iterator[None]:
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def discard_partial(folder: Path, since: float) -> int:
    """Delete the artifacts a cut-short compile left half-written under folder; how many.

    Inductor writes sources and cache entries atomically (temp file + rename) but links a
    kernel library straight to its final path, so a linker stopped by the cap leaves an empty
    or truncated .so that a later run would try to load. Complete files stay, so the cache
    still warms up from run to run.
    """
    gone = 0
    for f in folder.rglob("*"):
        try:
            if not f.is_file() or f.stat().st_mtime < since - 1.0:
                continue
            broken = f.stat().st_size == 0 or (
                f.suffix == ".so" and sys.platform.startswith("linux") and not elf_complete(f))
            if broken:
                f.unlink()
                gone += 1
        except OSError:
            continue
    return gone


def elf_complete(path: Path) -> bool:
    """Whether an ELF file holds its whole section-header table (the linker writes it last)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 64 or head[:4] != b"\x7fELF":
        return False
    order = "<" if head[5] == 1 else ">"
    if head[4] == 2:  # 64-bit: e_shoff at 0x28, e_shentsize / e_shnum at 0x3A
        (shoff,) = struct.unpack_from(order + "Q", head, 0x28)
        shentsize, shnum = struct.unpack_from(order + "HH", head, 0x3A)
    else:  # 32-bit: e_shoff at 0x20, e_shentsize / e_shnum at 0x2E
        (shoff,) = struct.unpack_from(order + "I", head, 0x20)
        shentsize, shnum = struct.unpack_from(order + "HH", head, 0x2E)
    return size >= shoff + shentsize * shnum
