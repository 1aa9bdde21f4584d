"""emdenoise.errors: the endings of the python -m scripts (errors.script)."""

from __future__ import annotations

import subprocess
import sys

from emdenoise.errors import EXIT_BAD_INPUT, EXIT_PIPE

SCRIPT = "import sys; from emdenoise.errors import InputError, script; sys.exit(script({}))"


def _run(work: str, close_stdout: bool = False) -> tuple[int, str, str]:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(work)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if close_stdout:
        assert proc.stdout is not None
        proc.stdout.close()  # the reader goes away before the summary is printed: python -m ... | head
    out = b"" if close_stdout else proc.stdout.read()  # type: ignore[union-attr]
    err = proc.stderr.read().decode()  # type: ignore[union-attr]
    return proc.wait(timeout=60), out.decode(), err


def test_a_script_prints_its_summary_or_one_error_line():
    assert _run("lambda: 'done'") == (0, "done\n", "")
    code, out, err = _run("lambda: (_ for _ in ()).throw(InputError('f.h5: images: expected 3-D'))")
    assert (code, out, err) == (EXIT_BAD_INPUT, "", "error: f.h5: images: expected 3-D\n")


def test_a_script_whose_reader_went_away_ends_quietly():
    code, _, err = _run("lambda: 'x' * 1_000_000", close_stdout=True)
    assert code == EXIT_PIPE and "Traceback" not in err and "BrokenPipe" not in err, err
