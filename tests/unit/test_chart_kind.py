"""hack/kind.sh, the kind path for users with Docker: shellcheck-clean, and it stops early and clearly.

Docker and kind are not available here or in CI, so the script's cluster steps cannot run; what can be
checked without them is checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KIND_SH = REPO / "hack" / "kind.sh"


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian package shellcheck)")
    result = subprocess.run([shellcheck, str(KIND_SH)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def run(*args: str, path: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path}
    return subprocess.run(["/bin/bash", str(KIND_SH), *args], capture_output=True, text=True, env=env, timeout=60)


def test_usage() -> None:
    result = run(path=os.environ["PATH"])
    assert result.returncode == 2 and "usage:" in result.stderr


def test_up_names_the_missing_tool_before_doing_anything(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sed", "head", "grep", "dirname"):  # what the script uses before its checks
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    result = run("up", path=str(bin_dir))
    assert result.returncode == 1
    assert "kind.sh: error: docker is not on PATH (see docs/install.md)" in result.stderr, result.stderr
