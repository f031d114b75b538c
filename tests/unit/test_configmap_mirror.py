"""hack/configmap_mirror.py lays a ConfigMap out as the kubelet mounts it (the ratelimit service's
RUNTIME_IGNOREDOTFILES/RUNTIME_WATCH_ROOT settings are only exercised by that exact layout)."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType

import pytest

HACK = Path(__file__).resolve().parents[2] / "hack"


@pytest.fixture(scope="module")
def mirror() -> ModuleType:
    spec = importlib.util.spec_from_file_location("configmap_mirror", HACK / "configmap_mirror.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layout(target: Path) -> dict[str, str]:
    """Every entry of the mount point: a link's target, or `dir` for a directory."""
    return {p.name: os.readlink(p) if p.is_symlink() else "dir" for p in target.iterdir()}


def test_kubelet_layout_then_atomic_update_then_removed_key(mirror: ModuleType, tmp_path: Path) -> None:
    target = tmp_path / "config"
    assert mirror.write_atomically(target, {"a.yaml": "domain: a\n", "b.yaml": "domain: b\n"})
    first = os.readlink(target / "..data")
    assert re.fullmatch(r"\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\w+", first)
    assert layout(target) == {first: "dir", "..data": first, "a.yaml": "..data/a.yaml", "b.yaml": "..data/b.yaml"}
    assert (target / "a.yaml").read_text() == "domain: a\n"

    assert not mirror.write_atomically(target, {"a.yaml": "domain: a\n", "b.yaml": "domain: b\n"})
    assert os.readlink(target / "..data") == first  # unchanged data: no new version

    assert mirror.write_atomically(target, {"a.yaml": "domain: a2\n", "c.yaml": "domain: c\n"})
    second = os.readlink(target / "..data")
    assert second != first
    # The old version's directory is gone, and so is the link of the removed key.
    assert layout(target) == {second: "dir", "..data": second, "a.yaml": "..data/a.yaml", "c.yaml": "..data/c.yaml"}
    assert (target / "a.yaml").read_text() == "domain: a2\n"


def test_missing_config_map_mirrors_as_empty(mirror: ModuleType, tmp_path: Path) -> None:
    target = tmp_path / "config"
    mirror.write_atomically(target, {"a.yaml": "x\n"})
    mirror.apply(target, None)
    version = os.readlink(target / "..data")
    assert layout(target) == {version: "dir", "..data": version}
    assert not list((target / version).iterdir())
