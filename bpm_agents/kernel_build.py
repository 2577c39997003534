"""Build the small C++ kernels of the fast paths at first use, once per machine.

A :class:`CppKernel` compiles its source (a ``.cpp`` file of ``bpm_agents/ops/csrc`` with the
headers beside it, or a source string) with the system C++ compiler (no PyTorch headers, so a
build takes seconds) into a float32 and a float64 shared library (``-DBPM_F64``), caches them on
disk under a key of the sources, compiler, flags, CPU and Python, and loads them with ctypes. A
build prints one line to stderr (the first call waits for it). Any build problem, or a library
whose ``abi_check`` fails, leaves the kernel unavailable with a reason (and one warning), so
callers fall back to their plain PyTorch reference.

Environment: ``BPM_DISABLE_FAST_UNROLL=1`` turns every kernel off; ``BPM_KERNEL_CACHE`` moves the
cache (default ``~/.cache/backpropamine-gym``); ``BPM_KERNEL_CFLAGS`` adds compiler flags; ``CXX``
picks the compiler.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["CppKernel", "cache_dir"]

_BASE_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fopenmp-simd"]
_PRECISIONS = {torch.float32: [], torch.float64: ["-DBPM_F64"]}
#: tried in order until one compiles (not every compiler knows -march=native). On x86 GCC and
#: Clang default to 256-bit vectors even on AVX-512 CPUs; the kernels' rows are padded to 16
#: floats, and full-width vectors made the cue backward 10-12% faster on an AVX-512 Xeon
#: (benchmarks/roofline.py). The flag only sets a preference: without AVX-512 it changes nothing.
_ARCH_TRIES: tuple[tuple[str, ...], ...] = (
    (("-march=native", "-mprefer-vector-width=512"),)
    if platform.machine().lower() in ("x86_64", "amd64")
    else ()
) + (("-march=native",), ())


def cache_dir() -> str:
    """Where built kernels are kept."""
    return os.environ.get("BPM_KERNEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "backpropamine-gym",
    )


def _cpu_signature() -> str:
    """Part of the cache key: the build uses -march=native, so it is only valid on this CPU."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "model name")):
                    flags += line
                    if line.startswith("flags"):
                        break
    except OSError:
        pass
    return platform.machine() + platform.processor() + flags


class CppKernel:
    """One C++ source, built lazily into float32 and float64 libraries.

    Args:
        name: file-name stem of the cached libraries.
        source: the C++ source text, or the path (a ``pathlib.Path``) of a ``.cpp`` file (its folder is on the include
            path, and every ``.h`` there is part of the cache key); ``Real`` is ``double`` where
            ``BPM_F64`` is defined.
        functions: exported symbol -> (argtypes, restype), set on each loaded library.
        flags: compiler flags beyond the common ones.
        abi_check: called with each loaded library; returns ``None`` if it fits the Python side,
            else the reason (the kernel is then unavailable rather than corrupting memory).
    """

    def __init__(
        self,
        name: str,
        source: str | os.PathLike[str],
        functions: dict[str, tuple[list[Any], Any]],
        flags: Sequence[str] = (),
        abi_check: Callable[[ctypes.CDLL], str | None] | None = None,
    ) -> None:
        self.source_path: str | None = None
        self.include_dir: str | None = None
        if isinstance(source, os.PathLike):
            self.source_path = os.fspath(source)
            self.include_dir = os.path.dirname(os.path.abspath(self.source_path))
            with open(self.source_path, encoding="utf-8") as fh:
                source = fh.read()
            for header in sorted(os.listdir(self.include_dir)):
                if header.endswith(".h"):
                    with open(os.path.join(self.include_dir, header), encoding="utf-8") as fh:
                        source += "\n// header " + header + "\n" + fh.read()  # only for the key
        self.name, self.source, self.functions, self.flags = name, str(source), functions, list(flags)
        self.abi_check = abi_check
        self.error: str | None = None  # why the kernel is unavailable, once known
        self._libs: dict[torch.dtype, ctypes.CDLL] | None = None
        self._lock = threading.Lock()

    def libraries(self) -> dict[torch.dtype, ctypes.CDLL] | None:
        """The loaded libraries by dtype, built at first use; ``None`` (see :attr:`error`) if they cannot be."""
        if self._libs is not None or self.error is not None:
            return self._libs
        with self._lock:
            if self._libs is None and self.error is None:
                if os.environ.get("BPM_DISABLE_FAST_UNROLL", "") not in ("", "0"):
                    self.error = "disabled by BPM_DISABLE_FAST_UNROLL"
                else:
                    try:
                        self._libs = self._build()
                    except Exception as exc:  # any build problem means: use the reference
                        self.error = f"{type(exc).__name__}: {exc}"
                        warnings.warn(
                            f"C++ kernel {self.name} unavailable, using the reference: {self.error}",
                            RuntimeWarning,
                            stacklevel=3,
                        )
        return self._libs

    def _build(self) -> dict[torch.dtype, ctypes.CDLL]:
        compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
        if compiler is None:
            raise RuntimeError("no C++ compiler found (set CXX or install g++)")
        flags = _BASE_FLAGS + self.flags + os.environ.get("BPM_KERNEL_CFLAGS", "").split()
        key = hashlib.sha256(
            (
                self.source + compiler + " ".join(flags) + repr(_ARCH_TRIES) + _cpu_signature() + sys.version
            ).encode()
        ).hexdigest()[:16]
        cache = cache_dir()
        os.makedirs(cache, exist_ok=True)
        targets = {
            dt: os.path.join(cache, f"{self.name}_{key}_{str(dt).split('.')[-1]}.so") for dt in _PRECISIONS
        }
        missing = [dt for dt in _PRECISIONS if not os.path.exists(targets[dt])]
        if missing:
            print(
                f"backpropamine-gym: compiling the C++ kernel '{self.name}' (once per machine, "
                "about 10-30 s)...",
                file=sys.stderr,
                flush=True,
            )
            self._compile(compiler, flags, missing, targets, cache)
        libs = {}
        for dt, path in targets.items():
            lib = ctypes.CDLL(path)
            for symbol, (argtypes, restype) in self.functions.items():
                fn = getattr(lib, symbol)
                fn.argtypes = argtypes
                fn.restype = restype
            if self.abi_check is not None:
                problem = self.abi_check(lib)
                if problem is not None:
                    raise RuntimeError(f"{path} does not fit this version of the package: {problem}")
            libs[dt] = lib
        return libs

    def _compile(self, compiler, flags, missing, targets, cache) -> None:
        """Build the missing precisions in parallel into a temporary folder, then move them in."""
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            if self.source_path is not None:
                src = self.source_path
                flags = [*flags, "-I", self.include_dir]
            else:
                src = os.path.join(tmp, f"{self.name}.cpp")
                with open(src, "w") as fh:
                    fh.write(self.source)
            errors: list[str] = []
            for arch in _ARCH_TRIES:
                procs = {
                    dt: subprocess.Popen(
                        [compiler, *flags, *arch, *_PRECISIONS[dt], src, "-o", os.path.join(tmp, f"{i}.so")],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                    for i, dt in enumerate(missing)
                }
                failed = []
                for i, (dt, proc) in enumerate(procs.items()):
                    _, err = proc.communicate()
                    if proc.returncode == 0:
                        # atomic: concurrent processes never see half a file
                        os.replace(os.path.join(tmp, f"{i}.so"), targets[dt])
                    else:
                        failed.append(dt)
                        errors.append(err[-2000:])
                missing = failed
                if not missing:
                    return
            raise RuntimeError(f"compiling the C++ kernel {self.name} failed:\n" + "\n".join(errors))
