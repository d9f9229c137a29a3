"""Shared test set-up: small, deterministic, CPU. pyproject.toml runs the suite on every core
with pytest-xdist, one test file per worker at a time (`--dist loadfile`), so module-scoped
fixtures (a trained run, two hosts) are built once.

Compiled programs are shared through one persistent XLA compilation cache for the whole run
(JAX's own `JAX_COMPILATION_CACHE_DIR`, a fresh temporary folder unless you set one): the
workers and every CLI, multi-host and notebook subprocess the tests start inherit it, so the
smoke configs' train, eval and sample functions compile once per run, not once per test. The
cache key holds the program, the jax/jaxlib versions and XLA_FLAGS, so a hit is the same
executable a compile would give. Its size limit turns on JAX's file lock (the `filelock`
package), so two workers never read an entry half written.

At these tiny shapes compiling, not running, is the cost: the suite skips LLVM's optimisation
passes (`--xla_backend_optimization_level=0`; XLA's own HLO passes still run, so the programs
are the same and a digits smoke run needs 0.6× the CPU time). A level already in XLA_FLAGS
wins, e.g. `XLA_FLAGS=--xla_backend_optimization_level=2 pytest` tests at the users' level.
"""

import importlib.util
import os
import shutil
import signal
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The tests that press Ctrl-C (tests/test_signals.py, the preemption and eval-resume tests)
# start the CLI as a terminal would. A suite started as a background job (`pytest &` in a
# script, nohup) inherits SIGINT ignored, its children too, and vdm keeps an ignored SIGINT
# ignored, as it should (vdm/signals.py): the suite restores SIGINT's default first, so the
# processes it starts get SIGINT at its default whatever started the suite.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = None
# Without `filelock` (an install without the test extras) JAX cannot lock a size-limited
# cache, so the suite shares none rather than risk a half-written entry.
if importlib.util.find_spec("filelock") is not None:
    if _CACHE_ENV not in os.environ:  # the controller makes it; xdist workers inherit it
        _OWN_CACHE = tempfile.mkdtemp(prefix="vdm-tests-xla-cache-")
        os.environ[_CACHE_ENV] = _OWN_CACHE
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    _flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    os.environ["XLA_FLAGS"] = _flags.strip()


def pytest_unconfigure(config):
    if _OWN_CACHE is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# The files whose tests take longest, longest first (the slowest 40 tests of a full run,
# `pytest --durations=40`, summed per file; 2026-12-06). xdist hands each worker whole files
# in the collection's order; by default it orders them by their number of tests
# (`--loadscope-reorder`, turned off in pyproject.toml), which put the longest files, the
# notebooks (about 15 minutes) and the two-process tests, in the middle and at the end, where
# one worker could be left running them alone. Longest first keeps that from happening; it
# did not shorten the suite measurably (1,711 s on 2026-12-07 against 1,702–1,935 s before):
# the suite's length is its total work on 2 cores. Files not listed follow in collection
# order.
LONGEST_FIRST = (
    "test_notebooks.py",
    "test_train.py",
    "test_reliability.py",
    "test_multivariate.py",
    "test_multihost.py",
    "test_compress.py",
    "test_networks.py",
    "test_precision.py",
    "test_dequantization.py",
    "test_ablation.py",
    "test_objectives.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: in-file order kept
