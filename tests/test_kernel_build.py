"""bpm_agents.kernel_build: C++ kernels are built once, cached, and fail soft."""

from __future__ import annotations

import ctypes
import os

import pytest
import torch

from bpm_agents.kernel_build import CppKernel

SOURCE = r"""
#ifdef BPM_F64
typedef double Real;
#else
typedef float Real;
#endif
extern "C" long long bpm_real_size() { return sizeof(Real); }
"""


def test_builds_both_precisions_once_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("BPM_KERNEL_CACHE", str(tmp_path))
    monkeypatch.delenv("BPM_DISABLE_FAST_UNROLL", raising=False)
    kernel = CppKernel("probe", SOURCE, {"bpm_real_size": ([], ctypes.c_longlong)})
    libs = kernel.libraries()
    assert kernel.error is None
    assert libs[torch.float32].bpm_real_size() == 4
    assert libs[torch.float64].bpm_real_size() == 8
    built = {f: os.stat(tmp_path / f).st_mtime_ns for f in os.listdir(tmp_path)}
    assert len([f for f in built if f.endswith(".so")]) == 2
    # a second kernel object with the same source loads the cached files: nothing is rebuilt
    again = CppKernel("probe", SOURCE, {"bpm_real_size": ([], ctypes.c_longlong)})
    assert again.libraries()[torch.float64].bpm_real_size() == 8
    assert {f: os.stat(tmp_path / f).st_mtime_ns for f in os.listdir(tmp_path)} == built


def test_a_broken_source_leaves_the_kernel_unavailable_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("BPM_KERNEL_CACHE", str(tmp_path))
    monkeypatch.delenv("BPM_DISABLE_FAST_UNROLL", raising=False)
    kernel = CppKernel("broken", "this is not C++", {})
    with pytest.warns(RuntimeWarning, match="broken unavailable"):
        assert kernel.libraries() is None
    assert "compiling the C++ kernel broken failed" in kernel.error
    assert kernel.libraries() is None  # decided once: no second build, no second warning


def test_disabled_by_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BPM_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("BPM_DISABLE_FAST_UNROLL", "1")
    kernel = CppKernel("probe", SOURCE, {})
    assert kernel.libraries() is None
    assert kernel.error == "disabled by BPM_DISABLE_FAST_UNROLL"
    assert os.listdir(tmp_path) == []
