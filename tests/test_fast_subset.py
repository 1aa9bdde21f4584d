"""The hooks of fast_subset.py in a pytest run of their own: an unmarked test over the CPU bound fails with the
way out, a marked one or one under the bound passes, a missing extra skips."""

import pytest

INNER = """
import subprocess, sys, time
import pytest

def spin(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass

def test_busy():
    spin(0.4)

@pytest.mark.slow
def test_busy_but_marked():
    spin(0.4)

def test_quick():
    assert True

def test_busy_child():
    code = "import time\\nend = time.process_time() + 0.4\\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", code], check=True)

@pytest.mark.extra("formats")
def test_needs_a_missing_extra():
    raise AssertionError("never runs: rsciio is made unimportable below")
"""


def test_the_guard_and_the_extra_marker(pytester, monkeypatch):
    monkeypatch.setenv("EMDENOISE_SLOW_TEST_S", "0.2")
    monkeypatch.setitem(__import__("sys").modules, "rsciio", None)  # the formats extra is missing
    pytester.makeconftest("from fast_subset import pytest_runtest_call, pytest_runtest_setup  # noqa: F401\n")
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n    extra(name): extra\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=2, failed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_busy _*",
            "an unmarked test must be fast: this one took 0.* s of CPU *(at most 0.2 s of CPU*",
            "*_ test_busy_child _*",  # the CPU of the subprocesses it waited for counts
            "an unmarked test must be fast*",
            "*needs the optional extra: pip install 'emdenoise?formats?'*",  # fnmatch: [] is a class
        ]
    )
    assert "mark it @pytest.mark.slow" in result.stdout.str() and "EMDENOISE_SLOW_TEST_S" in result.stdout.str()


def test_zero_turns_the_guard_off(pytester, monkeypatch):
    monkeypatch.setenv("EMDENOISE_SLOW_TEST_S", "0")
    pytester.makeconftest("from fast_subset import pytest_runtest_call, pytest_runtest_setup  # noqa: F401\n")
    pytester.makepyfile(test_inner=INNER.split("@pytest.mark.extra")[0])
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=4)


@pytest.mark.parametrize("extra", ["abtem", "formats", "export", "bm3d", "peer"])
def test_every_extra_of_the_table_is_an_extra_of_the_package(extra, repo_root):
    import tomllib
    from fast_subset import EXTRAS

    optional = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extra in optional and extra in EXTRAS
