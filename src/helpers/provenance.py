"""Where the code of a run comes from: the project's git commit and whether the tree has
uncommitted changes (recorded in run.json and by the environment stage)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from helpers import paths


def git_state(root: Path = paths.ROOT) -> dict[str, Any]:
    """The project's commit and whether the tree has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": "unknown", "dirty": None, "reason": str(exc).splitlines()[0][:200]}
