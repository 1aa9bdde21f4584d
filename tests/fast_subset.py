"""Two hooks that keep the fast subset (``pytest -m "not slow and not container"``) fast and runnable anywhere;
tests/conftest.py imports them, and tests/test_fast_subset.py checks them in a pytest run of their own.

- ``@pytest.mark.extra("abtem")``: the test is skipped where a module of that optional extra is missing (CI
  installs every extra, so it runs there).
- The guard: an unmarked test (neither ``slow`` nor ``container``) whose call takes more than
  EMDENOISE_SLOW_TEST_S seconds of CPU fails, telling to mark it ``slow`` or make it faster; so does one that
  waits more than SLOW_WALL_FACTOR times that on the clock. CPU time, of the test process and the
  subprocesses it waited for, so that a loaded machine does not make a test fail. The default, 5 s, is what a
  test that starts one ``python -m emdenoise`` task (about 3 s of CPU: torch and the task's imports) can take
  without flaking; 0 turns the guard off.
"""

import os
import resource
import time

import pytest

# The optional extras of pyproject.toml and the modules each one installs.
EXTRAS = {
    "abtem": ("abtem", "ase"),
    "formats": ("rsciio",),
    "export": ("onnx", "onnxruntime"),
    "bm3d": ("bm3d",),
    "peer": ("tk_r_em", "tensorflow"),
}
SLOW_TEST_ENV = "EMDENOISE_SLOW_TEST_S"
SLOW_TEST_S = 5.0
SLOW_WALL_FACTOR = 20  # a test that waits; generous: on a loaded machine a 3 s CPU test took 29 s


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("extra"):
        for extra in mark.args:
            for module in EXTRAS[extra]:
                pytest.importorskip(module, reason=f"needs the optional extra: pip install 'emdenoise[{extra}]'")


def _cpu_seconds() -> float:
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    limit = float(os.environ.get(SLOW_TEST_ENV, SLOW_TEST_S))
    if limit <= 0 or item.get_closest_marker("slow") or item.get_closest_marker("container"):
        return (yield)
    cpu, wall = _cpu_seconds(), time.perf_counter()
    result = yield  # a test that fails is reported as it is
    cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - wall
    if cpu > limit or wall > SLOW_WALL_FACTOR * limit:
        pytest.fail(
            f"an unmarked test must be fast: this one took {cpu:.1f} s of CPU and {wall:.1f} s on the clock "
            f"(at most {limit:g} s of CPU and {SLOW_WALL_FACTOR * limit:g} s on the clock, {SLOW_TEST_ENV}): "
            "make it faster (smaller data, fewer epochs) or mark it @pytest.mark.slow",
            pytrace=False,
        )
    return result
