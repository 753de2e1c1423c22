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


@pytest.fixture(scope="module", autouse=True)
def reference_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private reference cache per test module (helpers.saved), so no test reuses the CPU
    sides another one computed."""
    from helpers import saved

    root = tmp_path_factory.mktemp("reference-cache")
    old = os.environ.get(saved.CACHE_ENV)
    os.environ[saved.CACHE_ENV] = str(root)
    yield root
    if old is None:
        os.environ.pop(saved.CACHE_ENV, None)
    else:
        os.environ[saved.CACHE_ENV] = old


# `make test-fast` (pytest -m "not slow") is the inner loop: unit tests only, well under a
# minute. Slow: whatever loads a model (the model_cache fixture), starts kernels, worker
# processes or notebooks, or runs the report end to end.
SLOW_MODULES = {"test_notebooks", "test_report_e2e", "test_kernels", "test_pipeline",
                "test_bad_input", "test_extend", "test_performance", "test_probes",
                "test_i18n", "test_accuracy", "test_gpu_check", "test_models", "test_covo",
                "test_release_components", "test_model_loading_stage", "test_tasks",
                "test_audio_components", "test_fixture_components", "test_capabilities"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: loads a model, starts processes or notebooks "
                                       "(left out by make test-fast)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in SLOW_MODULES or "model_cache" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
