"""Large kernel buffers reused between calls instead of allocated afresh.

glibc's malloc maps every block over 32 MiB afresh with mmap (its adaptive threshold, which
serves smaller blocks from the heap once one of that size has been freed, stops there) and
unmaps it on free, so the kernel's first write to it page-faults 4 KB at a time. Acting on the
cue task with the retroactive rule (B = 30) allocated two 40 MB trace checkpoint tensors per
rollout: their 19,500 page faults were a quarter of the acting time. :func:`empty` hands out a
cached tensor of that size instead, but only one whose storage nobody else refers to any more
(no tensor, view, saved autograd tensor or numpy array), so a buffer a caller still holds is
never written again. Smaller tensors are left to malloc: holding them here would keep its
threshold low and make other allocations fault.

The check reads the storage's reference count with ``torch._C._storage_Use_Count`` (what
PyTorch's own CUDA-graph trees use to know whether an output is still alive); where a PyTorch
version lacks it, nothing is cached and every call allocates.
"""

from __future__ import annotations

import math
import os
import threading

import torch
from torch import Tensor

#: smaller tensors are left to malloc (see above): not cached
MIN_BYTES = 32 << 20
#: at most this many bytes of cached buffers that nobody holds (least recently used go first)
MAX_IDLE_BYTES = 256 << 20

_lock = threading.Lock()
_cache: list[Tensor] = []  # flat tensors, least recently handed out first
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _after_fork_in_child() -> None:
    global _lock  # a fork while another thread held the lock would leave it held in the child
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _idle(t: Tensor) -> bool:
    # references to the storage: the cached tensor's and the temporary untyped_storage() object's
    assert _use_count is not None
    return _use_count(t.untyped_storage()._cdata) == 2


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.dtype.itemsize


def _alias(base: Tensor, shape: tuple[int, ...]) -> Tensor:
    # a tensor on base's storage that is not a view of it, so autograd treats it as a plain
    # tensor (a view made inside a custom Function's forward restricts in-place use of the output)
    strides = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    return torch.empty(0, dtype=base.dtype).set_(base.untyped_storage(), 0, shape, strides)


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised CPU tensor of ``shape`` and ``dtype``, like ``torch.empty``, possibly
    reusing the storage of an earlier one that is no longer referenced anywhere."""
    numel = math.prod(shape)
    nbytes = numel * dtype.itemsize
    if _use_count is None or nbytes < MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    with _lock:
        for i, t in enumerate(_cache):
            if t.dtype == dtype and t.numel() == numel and _idle(t):
                _cache.append(_cache.pop(i))
                return _alias(t, shape)
        t = torch.empty(numel, dtype=dtype)
        _cache.append(t)
        excess = sum(_nbytes(c) for c in _cache if _idle(c)) - MAX_IDLE_BYTES
        keep = []
        for c in _cache:  # least recently used first
            if excess > 0 and _idle(c):
                excess -= _nbytes(c)
            else:
                keep.append(c)
        _cache[:] = keep
        return _alias(t, shape)


def zeros(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """:func:`empty` filled with zeros (a memset of memory already mapped)."""
    return empty(shape, dtype).zero_()


def clear() -> None:
    """Drop every cached buffer (the memory of those nobody holds goes back to malloc)."""
    with _lock:
        _cache.clear()
