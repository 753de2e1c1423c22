"""Fixtures shared by several test modules, and how `make test` splits the suite between its
workers (pytest-xdist: `pytest -n 2`; every fixture here also works without xdist)."""

import gc
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from filelock import FileLock

from helpers.models import cache

# xdist's worker id ("gw0", ...); absent in a plain pytest run
WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def _shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder every worker of this test session sees (their basetemps' parent under xdist,
    the session's basetemp without it), created once."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if WORKER else base) / name
    folder.mkdir(exist_ok=True)
    return folder


@contextmanager
def env_at(name: str, folder: Path) -> Iterator[Path]:
    """Environment variable `name` set to `folder` while the block runs (kernels and processes
    started meanwhile inherit it), then as it was."""
    old = os.environ.get(name)
    os.environ[name] = str(folder)
    try:
        yield folder
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tests' own tiny-model cache, built once per session and shared by every module and
    every worker (helpers.models.cache builds a model once when two processes ask at once; the
    env var is read at every call; kernels and workers inherit it). A test that changes a
    recipe's tiny shape uses a seed of its own, so the cache rebuilds only that model."""
    with env_at(cache.ENV, _shared_dir(tmp_path_factory, "model-cache")) as root:
        yield root


@pytest.fixture(scope="session", autouse=True)
def figure_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's own figure cache (helpers.players, HELPERS_FIGURE_CACHE), shared by the
    workers: each figure a test's run shows is drawn in the session, once. The clone's
    .cache/figures, warm from earlier runs, would let a test skip the drawing code, and make
    the suite's time depend on what ran before it."""
    from helpers import players

    with env_at(players.FIGURE_CACHE_ENV, _shared_dir(tmp_path_factory, "figure-cache")) as root:
        yield root


@contextmanager
def reference_cache_at(root: Path) -> Iterator[Path]:
    """HELPERS_REFERENCE_CACHE (helpers.outputs) set to `root` while the block runs; kernels
    and workers inherit it."""
    from helpers import outputs

    with env_at(outputs.CACHE_ENV, root):
        yield root


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
    return _shared_dir(tmp_path_factory, "default-reference-cache")


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory, model_cache: Path,
                default_reference_cache: Path):  # noqa: ANN201 - a RunOutcome
    """`make report` with no arguments, run once per session (every stage, the HTML, the PDF
    where Chromium is): every test that reads a finished default run reads this one; no test
    writes into it. Its CPU sides are computed in the run, whatever ran before it (a reference
    cache of its own, empty before it); its tiny models come from the session's model cache.
    Under xdist the first worker to need it runs it while holding a lock; another worker that
    needs it meanwhile waits, then reads the outcome that run left."""
    from helpers.config import RunConfig
    from helpers.runner import pdf
    from helpers.runner.pipeline import run_pipeline

    out = _shared_dir(tmp_path_factory, "default-report")
    outcome = out.parent / "default-report.pickle"
    with FileLock(out.parent / "default-report.lock"):
        if outcome.exists():
            return pickle.loads(outcome.read_bytes())
        want_pdf = bool(pdf.find_chromium())
        if os.environ.get("REQUIRE_PDF") and not want_pdf:
            pytest.fail("REQUIRE_PDF is set but no Chromium was found: `make setup` installs it")
        with reference_cache_at(default_reference_cache):
            done = run_pipeline(RunConfig.from_params(out=str(out)), figures_dir=out / "figures",
                                pdf=want_pdf)
        outcome.write_bytes(pickle.dumps(done))
        return done


# `make test-fast` (pytest -m "not slow") is the inner loop: unit tests only, well under a
# minute. Slow: whatever loads a model (the model_cache fixture), starts kernels, worker
# processes or notebooks, or runs the report end to end.
SLOW_MODULES = {"test_notebooks", "test_report_e2e", "test_kernels", "test_pipeline",
                "test_bad_input", "test_extend", "test_performance", "test_probes",
                "test_i18n", "test_accuracy", "test_gpu_check", "test_models", "test_covo",
                "test_release_components", "test_model_loading_stage", "test_tasks",
                "test_audio_components", "test_fixture_components", "test_capabilities"}


# The modules that take longest, longest first (wall seconds of each on a worker of a 2-core
# host, measured whole): `make test` hands whole modules to its workers in collection order
# (--dist loadfile --no-loadscope-reorder), so a long module started last would leave one
# worker running alone. The first one reads the default run, which its worker then makes (see
# default_run).
LONGEST_FIRST = ("test_accuracy", "test_compare", "test_memory_budget", "test_verdicts",
                 "test_bad_input", "test_performance", "test_kernels", "test_probes",
                 "test_models", "test_saved", "test_notebooks", "test_model_loading_stage",
                 "test_report_e2e", "test_pipeline", "test_gpu_check", "test_capabilities",
                 "test_tasks", "test_audio_components")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: loads a model, starts processes or notebooks "
                                       "(left out by make test-fast)")
    if WORKER:
        # the host's cores split between the workers, and kernels and processes they start
        # inherit it: two workers whose OpenMP pools each take both cores of a 2-core host spin
        # against each other (a tiny decode 6x slower than on one thread each)
        import torch

        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_finish(session: pytest.Session) -> None:
    # what collection imported (torch, transformers, the notebooks' stack: about 600,000
    # objects) stays for the session: out of the collector's sight, each full collection a test
    # makes (the stages make one per freed model side) costs what the test itself allocated
    gc.freeze()


def _module(item: pytest.Item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1] if item.module else ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_module(item), len(rank)))  # stable within a module
    for item in items:
        if _module(item) in SLOW_MODULES or "model_cache" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
