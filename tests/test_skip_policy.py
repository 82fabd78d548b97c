"""CI fails on a silent skip: a skipped test under CI=true is a failure unless explicitly allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ALLOW_SKIPS_VAR, ROOT

SKIPPING = '''
import pytest

def test_runs():
    pass

def test_needs_a_tool():
    pytest.skip("the tool is not installed")

@pytest.mark.xfail(reason="known", strict=True)
def test_known_bug():
    assert False
'''


def _pytest(folder: Path, **env: str) -> subprocess.CompletedProcess:
    (folder / "test_sample.py").write_text(SKIPPING)
    base = {k: v for k, v in os.environ.items() if k not in ("CI", ALLOW_SKIPS_VAR)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "-q", "--rootdir", str(folder), "-c", os.devnull, str(folder)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**base, **env})


def test_a_skip_outside_ci_is_a_skip(tmp_path: Path) -> None:
    res = _pytest(tmp_path)
    assert res.returncode == 0, res.stdout
    assert "1 passed, 1 skipped, 1 xfailed" in res.stdout


def test_a_skip_under_ci_fails_and_says_how_to_allow_it(tmp_path: Path) -> None:
    res = _pytest(tmp_path, CI="true")
    assert res.returncode == 1, res.stdout
    assert "1 failed, 1 passed, 1 xfailed" in res.stdout
    assert "skipped under CI=true, which is a failure: the tool is not installed" in res.stdout
    assert f"{ALLOW_SKIPS_VAR}='test_sample.py::test_needs_a_tool'" in res.stdout


def test_an_allowed_skip_under_ci_passes_and_is_printed_loudly(tmp_path: Path) -> None:
    res = _pytest(tmp_path, CI="true", **{ALLOW_SKIPS_VAR: "test_sample.py::test_needs_a_tool"})
    assert res.returncode == 0, res.stdout
    assert "1 passed, 1 skipped, 1 xfailed" in res.stdout
    assert "these tests did NOT run" in res.stdout
    assert "NOT RUN: test_sample.py::test_needs_a_tool: the tool is not installed" in res.stdout
    other = _pytest(tmp_path, CI="true", **{ALLOW_SKIPS_VAR: "test_sample.py::test_needs"})
    assert other.returncode == 1, "a prefix of a test's name does not allow it"
