"""What a non-editable install ships: every package of the tree and the kernel sources."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("bpm_agents", "bpm_envs")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found == listed, (
        f"not listed: {sorted(found - listed)}; listed but absent: {sorted(listed - found)}"
    )


def test_kernel_sources_are_package_data_and_the_console_script_exists():
    data = _pyproject()["tool"]["setuptools"]["package-data"]["bpm_agents.ops"]
    sources = sorted(p.name for p in (ROOT / "bpm_agents/ops/csrc").iterdir())
    assert sources == ["bpm_common.h", "plastic_lstm.cpp", "plastic_rnn.cpp"]
    assert {"csrc/*.cpp", "csrc/*.h"} <= set(data)
    assert _pyproject()["project"]["scripts"] == {"bpm": "bpm_agents.cli:main"}
