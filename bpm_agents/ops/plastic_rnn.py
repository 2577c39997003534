"""Fused CPU ops of :class:`~bpm_agents.networks.PlasticRNN`: the whole-sequence forward and
backward, and the acting step that records what the backward needs.

The reference (:meth:`PlasticRNN.reference_unroll`) runs the rules of
:mod:`bpm_agents.plasticity` one step at a time with plain autograd, which writes about nine
(B, N, N) tensors per step and keeps them all for the backward pass. Here the C++ of
``csrc/plastic_rnn.cpp`` (built with the system compiler at first use, cached, loaded with
ctypes; ``csrc/bpm_common.h`` holds the worker pool and the padded-row helpers) does the work:

* each batch element is processed by one thread at a time, so its (N, N) traces stay in the
  core's cache; a forward step is one pass over the (N, N) arrays (trace update fused with the next
  step's recurrent drive), a backward step one pass plus a replay pass; rows are padded to a
  multiple of 16 so the vector loops have no scalar remainder;
* the backward keeps only the traces at every ``k``-th step (a checkpoint) plus the small
  (B, T, N) sequences (pre, x, M); within a segment it replays the trace updates and walks back.

Three entry points:

* :func:`unroll` - the replay: forward with autograd through :class:`_SequenceFunction`;
* :class:`Actor` - acting, one step per call with the state kept in the kernel's padded layout,
  the policy head and the sampling fused in, and a :class:`ActingRecord` of x, pre, M and the
  trace checkpoints;
* :func:`unroll_recorded` - learning from that record: the same backward, no forward at all.

The arithmetic restates the rules of :mod:`bpm_agents.plasticity` (that module is the
definition; the tests compare this path with it for every rule and option):

    drive_j = (W_in u + b)_j + sum_i s_i (w_ij + alpha_ij H_ij),   x = tanh(drive),   s = x(t-1)
    hebbian:      H <- clip(H + eta * s_i x_j)
    simple:       H <- clip(H + R_j * s_i x_j)
    retroactive:  H <- clip(H + R_j * E_ij);  E <- (1 - eta_e) E + eta_e * s_i x_j
    R_j = M (scalar modulation) or v_j M + u_j (fan-out),  M = act(w_M . x + b_M)

Only the sums are ordered differently from the reference, so results agree to rounding.

Supported: CPU tensors of dtype float32 or float64, every rule and option of
:class:`~bpm_agents.plasticity.PlasticityConfig` for which ``PlasticSynapses.kernel_static()`` is
not ``None``, ``episode_starts``, gradients w.r.t. every parameter of the network, the inputs
and the initial state (first-order only). Elsewhere (CUDA, other dtypes, no C++ compiler)
:func:`supports` is False and ``PlasticRNN.unroll(impl="auto")`` uses the reference.
``BPM_DISABLE_FAST_UNROLL=1`` turns the kernel off; ``BPM_KERNEL_CACHE`` moves the build cache;
``BPM_KERNEL_CFLAGS`` adds compiler flags; ``BPM_POOL_SPIN_US`` sets how long idle workers spin
before sleeping (default 50 us).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor

from bpm_agents.kernel_build import CppKernel
from bpm_agents.ops import buffers
from bpm_agents.plasticity import KernelParams, KernelStatic, PlasticState, fast_kernel_unsupported

if TYPE_CHECKING:  # pragma: no cover
    from typing import TypeAlias

    from bpm_agents.networks import PlasticRNN

    _Opt: TypeAlias = "Tensor | None"
    #: (w, A, eta, eta_e, w_M, b_M, v, u), as :func:`_weights` returns them
    _Weights: TypeAlias = "tuple[Tensor, _Opt, _Opt, _Opt, _Opt, _Opt, _Opt, _Opt]"

__all__ = [
    "supports",
    "unsupported_reason",
    "unroll",
    "unroll_recorded",
    "kernel_available",
    "Actor",
    "ActingRecord",
    "CHECKPOINT_EVERY",
    "MAX_ACTIONS",
]

#: steps between stored trace checkpoints in the backward pass (memory ~ B * T / k * N^2)
CHECKPOINT_EVERY = 16
#: the fused policy head samples among at most this many actions
MAX_ACTIONS = 64
#: must equal BPM_RNN_ABI in csrc/plastic_rnn.cpp
ABI_VERSION = 4

_RULE_CODES = {"none": 0, "hebbian": 1, "simple": 2, "retroactive": 3}
_CSRC = Path(__file__).resolve().parent / "csrc"


class _Args(ctypes.Structure):
    """Mirror of ``struct Args`` in csrc/plastic_rnn.cpp (checked at load: see ``_abi_check``)."""

    _fields_ = (
        [(n, ctypes.c_int64) for n in ("B", "T", "N", "k", "nthreads")]
        + [(n, ctypes.c_int64) for n in ("rule", "fanout", "act_tanh", "save")]
        + [(n, ctypes.c_double) for n in ("clip", "eta", "ee", "bm")]
        + [
            (n, ctypes.c_void_p)
            for n in (
                "drive_in",
                "starts",
                "h0",
                "H",
                "E",
                "w",
                "A",
                "wm",
                "fv",
                "fu",
                "x",
                "pre",
                "m",
                "ckH",
                "ckE",
                "gx",
                "gm",
                "gdrive",
                "da",
                "dR",
                "dA",
                "dee",
                "gh",
                "gH",
                "gE",
                "H0",
                "E0",
            )
        ]
        + [(n, ctypes.c_int64) for n in ("D", "n_actions", "t")]
        + [
            (n, ctypes.c_void_p)
            for n in (
                "obs",
                "w_in",
                "b_in",
                "w_pi",
                "b_pi",
                "uniform",
                "actions",
                "S",
                "rec",
                "Hp",
                "Ep",
                "Wp",
                "Ap",
                "WinT",
                "gH_in",
                "gE_in",
            )
        ]
    )


def _abi_check(lib: ctypes.CDLL) -> str | None:
    """``None`` if the library was built from the Args layout above, else what differs."""
    got = int(lib.bpm_abi())
    version, size = got // 100000, (got % 100000) // 10
    if version != ABI_VERSION or size != ctypes.sizeof(_Args):
        return (
            f"library ABI {version} with a {size}-byte Args, this module expects ABI "
            f"{ABI_VERSION} with {ctypes.sizeof(_Args)} bytes"
        )
    return None


_ARG = [ctypes.POINTER(_Args)]
_KERNEL = CppKernel(
    "plastic_rnn",
    _CSRC / "plastic_rnn.cpp",
    {
        "bpm_forward": (_ARG, None),
        "bpm_backward": (_ARG, None),
        "bpm_act_begin": (_ARG, None),
        "bpm_act_step": (_ARG, None),
        "bpm_padded": ([ctypes.c_int64], ctypes.c_int64),
        "bpm_abi": ([], ctypes.c_int64),
    },
    abi_check=_abi_check,
)


def _library() -> dict[torch.dtype, ctypes.CDLL] | None:
    """The compiled kernels by dtype, built at first use; ``None`` if they cannot be."""
    return _KERNEL.libraries()


def kernel_available() -> bool:
    """True when the C++ kernel is (or can be) built on this machine."""
    return _library() is not None


def unsupported_reason(net: PlasticRNN, inputs: Tensor) -> str | None:
    """Why the fast path cannot run ``net`` on ``inputs`` (``None`` when it can)."""
    params = list(net.parameters())
    if inputs.device.type != "cpu" or any(p.device.type != "cpu" for p in params):
        return f"the fast unroll runs on CPU only (inputs on {inputs.device})"
    if inputs.dtype not in (torch.float32, torch.float64):
        return f"the fast unroll needs float32 or float64 inputs, got {inputs.dtype}"
    if any(p.dtype != inputs.dtype for p in params):
        return "the fast unroll needs the inputs and every parameter in one dtype"
    if inputs.shape[0] < 1 or inputs.shape[1] < 1:
        return f"the fast unroll needs B >= 1 and T >= 1, got shape {tuple(inputs.shape)}"
    static = net.synapses.kernel_static()
    if static is None or static.rule not in _RULE_CODES:
        why = fast_kernel_unsupported(net.plasticity) or f"rule {net.plasticity.rule!r}"
        return f"the kernel does not implement {why}"
    if _library() is None:
        return f"the C++ kernel is unavailable ({_KERNEL.error})"
    return None


def supports(net: PlasticRNN, inputs: Tensor) -> bool:
    """Whether ``impl="auto"`` takes this path for ``net`` on ``inputs``: wherever it can run.

    For the rule ``none`` the replay alone is about as fast as the reference's batched matrix
    products, but acting through :class:`Actor` and learning from its record (no forward at
    all) is much faster (benchmarks/results/train_throughput.md), so every rule takes it.
    """
    return unsupported_reason(net, inputs) is None


def _ptr(t: Tensor | np.ndarray | None) -> int | None:
    if t is None:
        return None
    if isinstance(t, np.ndarray):
        return t.ctypes.data
    return t.data_ptr()


def _meta(static: KernelStatic, T: int, k: int | None, starts: Tensor | None) -> dict:
    k = int(k or CHECKPOINT_EVERY)
    if k < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {k!r}")
    return {
        "rule": static.rule,
        "fanout": bool(static.fanout),
        "act_tanh": bool(static.act_tanh),
        "clip": float(static.clip),
        "k": min(k, T),
        "nthreads": max(1, torch.get_num_threads()),
        "starts": starts,
    }


def _weights(net: PlasticRNN) -> _Weights:
    """(w, A, eta, eta_e, w_M, b_M, v, u) in the kernel's order; None where the rule has none."""
    p: KernelParams = net.synapses.kernel_params()
    A = p.alpha.contiguous() if p.alpha is not None else None
    fv = p.fanout_weight.contiguous() if p.fanout_weight is not None else None
    fu = p.fanout_bias.contiguous() if p.fanout_bias is not None else None
    wm = p.mod_weight.contiguous() if p.mod_weight is not None else None
    return (net.w.contiguous(), A, p.eta, p.eta_e, wm, p.mod_bias, fv, fu)


class _SequenceFunction(torch.autograd.Function):
    """The fused sequence: (drive_in, h0, H0, E0, w, A, eta, eta_e, w_M, b_M, v, u) -> (x, M, H_T, E_T)."""

    @staticmethod
    def forward(ctx, meta, drive_in, h0, H0, E0, w, A, eta, ee, wm, bm, fv, fu):
        out = _run_forward(meta, drive_in, h0, H0, E0, w, A, eta, ee, wm, bm, fv, fu, save=True)
        x, pre, m, H, E, ckH, ckE = out
        _save_for_backward(ctx, meta, x, pre, m, ckH, ckE, w, A, eta, ee, wm, bm, fv, fu)
        ctx.mark_non_differentiable(pre)
        return x, m, H, E, pre

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gx, gm, gH_T, gE_T, _gpre):
        return _backward(ctx, gx, gm, gH_T, gE_T)


def _save_for_backward(ctx, meta, x, pre, m, ckH, ckE, w, A, eta, ee, wm, bm, fv, fu) -> None:
    """What :func:`_backward` reads: the same for the replayed and the acted forward."""
    ctx.meta = meta
    ctx.scalars = tuple(float(v) if v is not None else 0.0 for v in (eta, ee, bm))
    ctx.save_for_backward(x, pre, m, ckH, ckE, w, A, wm, fv, fu)


def _backward(ctx, gx, gm, gH_T, gE_T) -> tuple:
    """The backward of the sequence from what its forward (or acting) saved in ``ctx``.

    Returns the gradients of (meta, drive_in, h0, H0, E0, w, A, eta, eta_e, w_M, b_M, v, u).
    """
    meta = ctx.meta
    x, pre, m, ckH, ckE, w, A, wm, fv, fu = ctx.saved_tensors
    B, T, N = x.shape
    rule = meta["rule"]
    plastic, modulated, elig = rule != "none", rule in ("simple", "retroactive"), rule == "retroactive"
    dtype = x.dtype
    gx = torch.zeros_like(x) if gx is None else gx.contiguous()
    gm = None if (gm is None or not modulated) else gm.contiguous()
    gh = torch.zeros(B, N, dtype=dtype)  # the final hidden is x[:, -1]: its grad is in gx
    # the kernel reads the final traces' gradients (None: zero) and writes the initial ones
    gH_in = gH_T.contiguous() if (plastic and gH_T is not None) else None
    gE_in = gE_T.contiguous() if (elig and gE_T is not None) else None
    gH = buffers.empty((B, N, N), dtype) if plastic else None
    gE = buffers.empty((B, N, N), dtype) if elig else None
    gdrive = buffers.empty((B, T, N), dtype)
    da = torch.zeros(B, T, dtype=dtype) if modulated else None
    dR: Tensor | None
    if meta["fanout"]:
        dR = buffers.zeros((B, T, N), dtype)
    else:
        dR = torch.zeros(B, T, dtype=dtype) if plastic else None
    dA = buffers.empty((B, N, N), dtype) if plastic else None
    dee = torch.zeros(B, dtype=dtype) if elig else None
    eta, ee, bm = ctx.scalars
    args = _Args(
        B=B,
        T=T,
        N=N,
        k=meta["k"],
        nthreads=meta["nthreads"],
        rule=_RULE_CODES[rule],
        fanout=int(meta["fanout"]),
        act_tanh=int(meta["act_tanh"]),
        save=1,
        clip=meta["clip"],
        eta=eta,
        ee=ee,
        bm=bm,
        starts=_ptr(meta["starts"]),
        w=_ptr(w),
        A=_ptr(A),
        wm=_ptr(wm),
        fv=_ptr(fv),
        fu=_ptr(fu),
        x=_ptr(x),
        pre=_ptr(pre),
        m=_ptr(m),
        ckH=_ptr(ckH),
        ckE=_ptr(ckE),
        gx=_ptr(gx),
        gm=_ptr(gm),
        gdrive=_ptr(gdrive),
        da=_ptr(da),
        dR=_ptr(dR),
        dA=_ptr(dA),
        dee=_ptr(dee),
        gh=_ptr(gh),
        gH=_ptr(gH),
        gE=_ptr(gE),
        gH_in=_ptr(gH_in),
        gE_in=_ptr(gE_in),
    )
    libs = _library()
    assert libs is not None
    libs[dtype].bpm_backward(ctypes.byref(args))

    need = ctx.needs_input_grad
    flat_pre = pre.reshape(B * T, N)
    g_w = flat_pre.t() @ gdrive.reshape(B * T, N) if need[5] else None
    # dA and dR exist for the plastic rules, dee for the eligibility one, da for the modulated ones
    g_A = cast(Tensor, dA).sum(0) if (plastic and need[6]) else None
    g_eta = cast(Tensor, dR).sum().reshape(()) if (rule == "hebbian" and need[7]) else None
    g_ee = cast(Tensor, dee).sum().reshape(()) if (elig and need[8]) else None
    g_wm = g_bm = g_fv = g_fu = None
    if modulated:
        assert da is not None
        flat_da = da.reshape(B * T)
        g_wm = x.reshape(B * T, N).t() @ flat_da if need[9] else None
        g_bm = flat_da.sum().reshape(1) if need[10] else None
        if meta["fanout"]:
            assert dR is not None
            g_fv = torch.einsum("btn,bt->n", dR, m) if need[11] else None
            g_fu = dR.sum((0, 1)) if need[12] else None
    return (
        None,
        gdrive,
        gh,
        gH if plastic else None,
        gE if elig else None,
        g_w,
        g_A,
        g_eta,
        g_ee,
        g_wm,
        g_bm,
        g_fv,
        g_fu,
    )


def _run_forward(meta, drive_in, h0, H0, E0, w, A, eta, ee, wm, bm, fv, fu, save):
    """Call the forward kernel; returns (x, pre, M, H_T, E_T, checkpoints of H, of E)."""
    B, T, N = drive_in.shape
    rule = meta["rule"]
    plastic, modulated, elig = rule != "none", rule in ("simple", "retroactive"), rule == "retroactive"
    dtype = drive_in.dtype
    k = meta["k"]
    nck = (T + k - 1) // k
    x = buffers.empty((B, T, N), dtype)
    pre = buffers.empty((B, T, N), dtype) if save else None
    # autograd.Function outputs must be tensors: empty ones stand for "absent"
    m = torch.empty(B, T if modulated else 0, dtype=dtype)
    # the kernel reads the initial traces (H0, E0) and writes the final ones into new tensors
    empty = torch.empty(0, dtype=dtype)
    H0 = H0.detach().contiguous() if plastic else None
    E0 = E0.detach().contiguous() if elig else None
    H = buffers.empty((B, N, N), dtype) if plastic else empty
    E = buffers.empty((B, N, N), dtype) if elig else empty.clone()
    libs = _library()
    assert libs is not None
    P = libs[dtype].bpm_padded(N)  # the kernel keeps trace rows padded to a multiple of 16
    ckH = buffers.empty((B, nck, N * P), dtype) if (save and plastic) else None
    ckE = buffers.empty((B, nck, N * P), dtype) if (save and elig) else None
    args = _Args(
        B=B,
        T=T,
        N=N,
        k=k,
        nthreads=meta["nthreads"],
        rule=_RULE_CODES[rule],
        fanout=int(meta["fanout"]),
        act_tanh=int(meta["act_tanh"]),
        save=int(save),
        clip=meta["clip"],
        eta=float(eta) if eta is not None else 0.0,
        ee=float(ee) if ee is not None else 0.0,
        bm=float(bm) if bm is not None else 0.0,
        drive_in=_ptr(drive_in),
        starts=_ptr(meta["starts"]),
        h0=_ptr(h0),
        H=_ptr(H) if plastic else None,
        E=_ptr(E) if elig else None,
        H0=_ptr(H0),
        E0=_ptr(E0),
        w=_ptr(w),
        A=_ptr(A),
        wm=_ptr(wm),
        fv=_ptr(fv),
        fu=_ptr(fu),
        x=_ptr(x),
        pre=_ptr(pre),
        m=_ptr(m) if modulated else None,
        ckH=_ptr(ckH),
        ckE=_ptr(ckE),
    )
    libs[dtype].bpm_forward(ctypes.byref(args))
    if pre is None:
        pre = torch.empty(0, dtype=dtype)
    return x, pre, m, H, E, ckH, ckE


def unroll(
    net: PlasticRNN,
    inputs: Tensor,
    state: PlasticState,
    episode_starts: Tensor | None = None,
    checkpoint_every: int | None = None,
) -> tuple[Tensor, Tensor | None, PlasticState]:
    """Same contract and numbers (to rounding) as ``PlasticRNN.reference_unroll``.

    Args:
        net: the network.
        inputs: (B, T, D).
        state: state before the first step (hidden (B, N), traces (B, N, N) or (B, 0, 0)).
        episode_starts: optional (B, T) bool; where True the state is zeroed before that step.
        checkpoint_every: steps between stored trace checkpoints (default :data:`CHECKPOINT_EVERY`).
    Returns:
        hidden (B, T, N), modulators (B, T) or ``None``, final state.
    Raises:
        ValueError: when :func:`supports` is False for these arguments, or on bad shapes.
    """
    reason = unsupported_reason(net, inputs)
    if reason is not None:
        raise ValueError(reason)
    B, T, _ = inputs.shape
    N = net.hidden_size
    static = net.synapses.kernel_static()
    assert static is not None
    cfg = net.plasticity
    dtype = inputs.dtype
    _check_state(state, B, N, cfg)
    starts = None
    if episode_starts is not None:
        if episode_starts.shape != (B, T):
            raise ValueError(f"episode_starts must have shape ({B}, {T}), got {tuple(episode_starts.shape)}")
        starts = episode_starts.to(device="cpu", dtype=torch.bool).contiguous().view(torch.uint8)
    meta = _meta(static, T, checkpoint_every, starts)
    plastic, modulated, elig = cfg.plastic, cfg.modulated, cfg.eligibility

    drive_in = net.input(inputs).contiguous()  # W_in u + b for all steps: one matmul, plain autograd
    h0 = state.hidden.to(dtype).contiguous()
    H0 = state.hebb.to(dtype) if plastic else torch.empty(0, dtype=dtype)
    E0 = state.elig.to(dtype) if elig else torch.empty(0, dtype=dtype)
    tensors = (drive_in, h0, H0, E0, *_weights(net))
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if needs_grad:
        x, m, H, E, _ = _SequenceFunction.apply(meta, *tensors)
    else:
        with torch.no_grad():
            x, _, m, H, E, _, _ = _run_forward(meta, *tensors, save=False)
    if not modulated:
        m = None
    if not plastic:
        H = state.hebb
    if not elig:
        E = state.elig
    return x, m, PlasticState(x[:, -1], H, E)


def _check_state(state: PlasticState, B: int, N: int, cfg) -> None:
    if state.hidden.shape != (B, N):
        raise ValueError(f"state.hidden must have shape ({B}, {N}), got {tuple(state.hidden.shape)}")
    trace_shape = (B, N, N)
    if cfg.plastic and state.hebb.shape != trace_shape:
        raise ValueError(f"state.hebb must have shape {trace_shape}, got {tuple(state.hebb.shape)}")
    if cfg.eligibility and state.elig.shape != trace_shape:
        raise ValueError(f"state.elig must have shape {trace_shape}, got {tuple(state.elig.shape)}")


# ---------------------------------------------------------------------------------- acting
@dataclass
class ActingRecord:
    """What acting stored for the backward of its episodes (B elements, T steps).

    Attributes:
        x: (B, T, N) activities; pre: (B, T, N) the activity each step read (x(t-1));
        m: (B, T) modulators (empty (B, 0) for unmodulated rules);
        ckH, ckE: trace checkpoints every ``k`` steps, (B, ceil(T/k), N*P) (P = padded N), or None;
        h0: (B, N) the initial hidden state (the traces start at zero);
        k: checkpoint interval; versions: the parameters' version counters when acting started
        (learning from the record is valid only while they are unchanged).
    """

    x: Tensor
    pre: Tensor
    m: Tensor
    ckH: Tensor | None
    ckE: Tensor | None
    h0: Tensor
    k: int
    versions: tuple[int, ...]

    def matches(self, net: PlasticRNN) -> bool:
        """Whether ``net``'s parameters are those the record was made with."""
        return self.versions == _versions(net)

    def select(self, index: Tensor) -> ActingRecord:
        """The record of the batch elements ``index`` (a 1-d index tensor), e.g. a minibatch."""
        pick: Callable[[Tensor | None], Any] = lambda t: None if t is None else t[index].contiguous()  # noqa: E731
        return ActingRecord(
            pick(self.x),
            pick(self.pre),
            pick(self.m),
            pick(self.ckH),
            pick(self.ckE),
            pick(self.h0),
            self.k,
            self.versions,
        )


def _versions(net: PlasticRNN) -> tuple[int, ...]:
    # in-place updates (optimizer steps, load_state_dict, copy_) bump a tensor's version counter
    return tuple(p._version for p in net.parameters())


class Actor:
    """Acts B episodes in lock-step through the fused kernel, one step per call.

    The plastic state stays in the kernel's padded layout between calls (no copies per step), the
    input projection, the recurrent step, the policy head and the sampling are one call, and the
    activities are recorded for :func:`unroll_recorded`. Parameters are read once, at
    construction: build a new Actor after every optimizer step.

    Args:
        net: the recurrent core (its parameters are read, never changed).
        policy_weight: (A, N) and policy_bias: (A,) of the linear policy head.
        batch: B. length: T, the number of steps to act (and record).
        uniforms: (B, T) float64 draws in [0, 1): step t samples element b's action by inverse
            CDF with ``uniforms[b, t]`` (see :func:`bpm_agents.policy.sample_actions`).
        record: keep what the backward needs (pre and trace checkpoints).
        checkpoint_every: steps between trace checkpoints (default :data:`CHECKPOINT_EVERY`).
    """

    def __init__(
        self,
        net: PlasticRNN,
        policy_weight: Tensor,
        policy_bias: Tensor,
        batch: int,
        length: int,
        uniforms: Tensor,
        record: bool = True,
        checkpoint_every: int | None = None,
    ) -> None:
        dtype = net.w.dtype
        probe = torch.empty(batch, length, net.input_size, dtype=dtype, device=net.w.device)
        reason = unsupported_reason(net, probe)
        if reason is not None:
            raise ValueError(reason)
        n_actions = policy_weight.shape[0]
        if not 1 <= n_actions <= MAX_ACTIONS:
            raise ValueError(f"the fused policy head takes 1 to {MAX_ACTIONS} actions, got {n_actions}")
        if uniforms.shape != (batch, length):
            raise ValueError(f"uniforms must have shape ({batch}, {length}), got {tuple(uniforms.shape)}")
        static = net.synapses.kernel_static()
        assert static is not None
        self.net, self.batch, self.length, self.t = net, batch, length, 0
        self.dtype = dtype
        self._np_dtype = np.float32 if dtype == torch.float32 else np.float64
        self._meta = _meta(static, length, checkpoint_every, None)
        self._versions = _versions(net)
        B, T, N, D, k = batch, length, net.hidden_size, net.input_size, self._meta["k"]
        cfg = net.plasticity
        libs = _library()
        assert libs is not None
        self._lib = libs[dtype]
        P = int(self._lib.bpm_padded(N))
        nck = (T + k - 1) // k
        with torch.no_grad():
            w, A, eta, ee, wm, bm, fv, fu = (
                None if t is None else t.detach().contiguous() for t in _weights(net)
            )
            self._keep = [
                w,
                A,
                wm,
                fv,
                fu,
                net.input.weight.detach().contiguous(),
                net.input.bias.detach().contiguous(),
                policy_weight.detach().to(dtype).contiguous(),
                policy_bias.detach().to(dtype).contiguous(),
                uniforms.detach().to(torch.float64).contiguous(),
            ]
        z = lambda *shape: torch.zeros(*shape, dtype=dtype)  # noqa: E731
        self.x = buffers.empty((B, T, N), dtype)
        self.pre = buffers.empty((B, T, N), dtype) if record else None
        self.m = torch.empty(B, T if cfg.modulated else 0, dtype=dtype)
        self.ckH = buffers.empty((B, nck, N * P), dtype) if (record and cfg.plastic) else None
        self.ckE = buffers.empty((B, nck, N * P), dtype) if (record and cfg.eligibility) else None
        self.h0 = z(B, N)
        # episodes start from zero traces, which act_begin writes (no H0 / E0 to fill and copy)
        self._state = [
            z(B, P),
            z(B, P),
            buffers.empty((B, N * P), dtype) if cfg.plastic else None,
            buffers.empty((B, N * P), dtype) if cfg.eligibility else None,
            z(N * P),
            z(N * P) if cfg.plastic else None,
            z(D * P),
        ]
        S, rec, Hp, Ep, Wp, Ap, WinT = self._state
        self.actions = np.zeros(B, dtype=np.int64)
        m = self._meta
        self._args = _Args(
            B=B,
            T=T,
            N=N,
            k=k,
            nthreads=m["nthreads"],
            rule=_RULE_CODES[m["rule"]],
            fanout=int(m["fanout"]),
            act_tanh=int(m["act_tanh"]),
            save=int(record),
            clip=m["clip"],
            eta=float(eta) if eta is not None else 0.0,
            ee=float(ee) if ee is not None else 0.0,
            bm=float(bm) if bm is not None else 0.0,
            h0=_ptr(self.h0),
            H0=None,
            E0=None,
            w=_ptr(w),
            A=_ptr(A),
            wm=_ptr(wm),
            fv=_ptr(fv),
            fu=_ptr(fu),
            x=_ptr(self.x),
            pre=_ptr(self.pre),
            m=_ptr(self.m) if cfg.modulated else None,
            ckH=_ptr(self.ckH),
            ckE=_ptr(self.ckE),
            D=D,
            n_actions=n_actions,
            t=0,
            w_in=_ptr(self._keep[5]),
            b_in=_ptr(self._keep[6]),
            w_pi=_ptr(self._keep[7]),
            b_pi=_ptr(self._keep[8]),
            uniform=_ptr(self._keep[9]),
            actions=_ptr(self.actions),
            S=_ptr(S),
            rec=_ptr(rec),
            Hp=_ptr(Hp),
            Ep=_ptr(Ep),
            Wp=_ptr(Wp),
            Ap=_ptr(Ap),
            WinT=_ptr(WinT),
        )
        self._lib.bpm_act_begin(ctypes.byref(self._args))

    def step(self, obs: np.ndarray) -> np.ndarray:
        """One step of every element: obs (B, D) -> the sampled actions (B,) int64 (a new array)."""
        if self.t >= self.length:
            raise ValueError(f"this Actor was built for {self.length} steps; build a new one")
        obs = np.ascontiguousarray(obs, dtype=self._np_dtype)
        if obs.shape != (self.batch, self.net.input_size):
            raise ValueError(f"obs must have shape ({self.batch}, {self.net.input_size}), got {obs.shape}")
        self._args.t = self.t
        self._args.obs = obs.ctypes.data
        self._lib.bpm_act_step(ctypes.byref(self._args))
        self.t += 1
        return self.actions.copy()

    @property
    def modulators(self) -> Tensor | None:
        """(B, t) modulators of the steps taken so far, ``None`` for unmodulated rules."""
        return self.m[:, : self.t] if self.net.plasticity.modulated else None

    def record(self) -> ActingRecord:
        """The record of a completed episode batch, for :func:`unroll_recorded`."""
        if self.t != self.length or self.pre is None:
            raise ValueError(
                f"a record needs all {self.length} steps acted with record=True (acted {self.t})"
            )
        return ActingRecord(
            self.x, self.pre, self.m, self.ckH, self.ckE, self.h0, self._meta["k"], self._versions
        )


class _RecordedFunction(torch.autograd.Function):
    """The sequence whose forward was done while acting: returns the recorded (x, M), and its
    backward is :func:`_backward`, exactly as for :class:`_SequenceFunction`."""

    @staticmethod
    def forward(ctx, meta, drive_in, h0, H0, E0, w, A, eta, ee, wm, bm, fv, fu, x, pre, m, ckH, ckE):
        _save_for_backward(ctx, meta, x, pre, m, ckH, ckE, w, A, eta, ee, wm, bm, fv, fu)
        return x.clone(), m.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gx, gm):
        return (*_backward(ctx, gx, gm, None, None), None, None, None, None, None)


def unroll_recorded(net: PlasticRNN, inputs: Tensor, record: ActingRecord) -> tuple[Tensor, Tensor | None]:
    """Hidden (B, T, N) and modulators (B, T) of acted episodes, with autograd, without a forward.

    ``inputs`` are the observations acted on, (B, T, D), from the zero state. Gradients equal
    those of :func:`unroll` over the same inputs to rounding (tested).

    Raises:
        ValueError: when the parameters changed since acting, or shapes do not fit.
    """
    if not record.matches(net):
        raise ValueError("the parameters changed since this record was made; replay with unroll()")
    reason = unsupported_reason(net, inputs)
    if reason is not None:
        raise ValueError(reason)
    B, T, _ = inputs.shape
    if record.x.shape != (B, T, net.hidden_size):
        raise ValueError(f"record is for shape {tuple(record.x.shape)}, inputs are {tuple(inputs.shape)}")
    static = net.synapses.kernel_static()
    assert static is not None
    cfg = net.plasticity
    dtype = inputs.dtype
    meta = _meta(static, T, record.k, None)
    drive_in = net.input(inputs).contiguous()
    H0 = (
        torch.zeros(B, net.hidden_size, net.hidden_size, dtype=dtype)
        if cfg.plastic
        else torch.empty(0, dtype=dtype)
    )
    E0 = torch.zeros_like(H0) if cfg.eligibility else torch.empty(0, dtype=dtype)
    x, m = _RecordedFunction.apply(
        meta,
        drive_in,
        record.h0,
        H0,
        E0,
        *_weights(net),
        record.x,
        record.pre,
        record.m,
        record.ckH,
        record.ckE,
    )
    return x, (m if cfg.modulated else None)
