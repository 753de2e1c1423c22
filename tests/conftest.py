"""Fixtures shared by several test modules."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers.models import cache


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tests' own tiny-model cache, built once per session and shared by every module
    (the env var is read at every call; kernels and workers inherit it). A test that changes a
    recipe's tiny shape uses a seed of its own, so the cache rebuilds only that model."""
    root = tmp_path_factory.mktemp("model-cache")
    old = os.environ.get(cache.ENV)
    os.environ[cache.ENV] = str(root)
    yield root
    if old is None:
        os.environ.pop(cache.ENV, None)
    else:
        os.environ[cache.ENV] = old


@contextmanager
def reference_cache_at(root: Path) -> Iterator[Path]:
    """HELPERS_REFERENCE_CACHE (helpers.outputs) set to `root` while the block runs; kernels
    and workers inherit it."""
    from helpers import outputs

    old = os.environ.get(outputs.CACHE_ENV)
    os.environ[outputs.CACHE_ENV] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop(outputs.CACHE_ENV, None)
        else:
            os.environ[outputs.CACHE_ENV] = old


@pytest.fixture(scope="module", autouse=True)
def reference_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private reference cache per test module, so no test reuses the CPU sides another one
    computed (a test that counts cache hits and misses counts its own module's alone). Not
    shared session-wide: a module's first stage 4 or 6 run would then depend on which modules
    ran before it, computed or reused."""
    with reference_cache_at(tmp_path_factory.mktemp("reference-cache")) as root:
        yield root


@pytest.fixture(scope="session")
def default_reference_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default run's reference cache: the CPU sides of the default stages 4 and 6, computed
    in that run (see default_run)."""
    return tmp_path_factory.mktemp("default-reference-cache")


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory, model_cache: Path,
                default_reference_cache: Path):  # noqa: ANN201 - a RunOutcome
    """`make report` with no arguments, run once per session (every stage, the HTML, the PDF
    where Chromium is): every test that reads a finished default run reads this one; no test
    writes into it. Its CPU sides are computed in the run, whatever ran before it (a reference
    cache of its own, empty before it); its tiny models come from the session's model cache."""
    from helpers.config import RunConfig
    from helpers.runner import pdf
    from helpers.runner.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("report")
    want_pdf = bool(pdf.find_chromium())
    if os.environ.get("REQUIRE_PDF") and not want_pdf:
        pytest.fail("REQUIRE_PDF is set but no Chromium was found: `make setup` installs it")
    with reference_cache_at(default_reference_cache):
        return run_pipeline(RunConfig.from_params(out=str(out)), figures_dir=out / "figures",
                            pdf=want_pdf)


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
