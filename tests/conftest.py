"""Fixtures shared by several test modules."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.models import cache


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private tiny-model cache for one test module (the env var is read at every call)."""
    root = tmp_path_factory.mktemp("model-cache")
    old = os.environ.get(cache.ENV)
    os.environ[cache.ENV] = str(root)
    yield root
    if old is None:
        os.environ.pop(cache.ENV, None)
    else:
        os.environ[cache.ENV] = old
