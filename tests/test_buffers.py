"""The kernel buffer cache: a buffer is handed out again only once nothing refers to it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bpm_agents.ops import buffers

pytestmark = pytest.mark.skipif(buffers._use_count is None, reason="no storage use count in this torch")

SHAPE = (8, 1024, 1024)  # 32 MiB of float32, MIN_BYTES


@pytest.fixture(autouse=True)
def fresh_cache():
    buffers.clear()
    yield
    buffers.clear()


def test_reused_after_release_with_shape_and_dtype() -> None:
    a = buffers.empty(SHAPE, torch.float32)
    ptr = a.data_ptr()
    del a
    b = buffers.empty((8192, 1024), torch.float32)  # same size, another shape: the same storage
    assert b.data_ptr() == ptr and b.shape == (8192, 1024) and b.is_contiguous()
    assert b._base is None  # not a view: autograd treats it as a plain tensor
    c = buffers.empty(SHAPE, torch.float64)  # another dtype: not that storage
    assert c.data_ptr() != ptr


@pytest.mark.parametrize("holder", ["tensor", "view", "numpy", "autograd"])
def test_never_handed_out_while_referenced(holder: str) -> None:
    a = buffers.empty(SHAPE, torch.float32)
    a.fill_(3.0)
    ptr = a.data_ptr()
    keep: object
    if holder == "tensor":
        keep = a
    elif holder == "view":
        keep = a[1, 2:5]
    elif holder == "numpy":
        keep = a.numpy()
    else:  # saved for backward by autograd: the graph holds it
        w = torch.ones(SHAPE, requires_grad=True)
        keep = (w * a).sum()
    del a
    b = buffers.empty(SHAPE, torch.float32)
    assert b.data_ptr() != ptr
    b.fill_(-1.0)
    if holder == "autograd":
        assert isinstance(keep, torch.Tensor)
        keep.backward()
        assert w.grad is not None and torch.all(w.grad == 3.0)
    elif holder == "numpy":
        assert isinstance(keep, np.ndarray) and np.all(keep == 3.0)
    else:
        assert isinstance(keep, torch.Tensor) and torch.all(keep == 3.0)


def test_small_tensors_are_not_cached() -> None:
    a = buffers.empty((1024, 1024), torch.float32)  # 4 MiB
    del a
    assert len(buffers._cache) == 0
    assert buffers.empty((1024, 1024), torch.float32).shape == (1024, 1024)
    assert len(buffers._cache) == 0


def test_idle_bytes_stay_under_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buffers, "MIN_BYTES", 1 << 20)
    monkeypatch.setattr(buffers, "MAX_IDLE_BYTES", 5 << 20)
    for n in range(4, 12):  # eight sizes of 1-2.75 MiB (16 MiB in all), each released at once
        buffers.empty((n << 16,), torch.float32)
    idle = sum(t.numel() * 4 for t in buffers._cache if buffers._idle(t))
    assert 0 < idle <= 5 << 20
    held = buffers.empty((3 << 18,), torch.float32)  # one in use is never evicted
    for n in range(12, 20):
        buffers.empty((n << 18,), torch.float32)
    assert any(t.data_ptr() == held.data_ptr() for t in buffers._cache)


def test_zeros_are_zero_after_reuse() -> None:
    a = buffers.empty(SHAPE, torch.float32)
    a.fill_(7.0)
    del a
    z = buffers.zeros(SHAPE, torch.float32)
    assert torch.count_nonzero(z) == 0
