"""The plasticity rules of Backpropamine, in one place.

A plastic connection from pre-synaptic neuron i to post-synaptic neuron j has a fixed weight
``w_ij`` (owned by the network) and a plastic part ``alpha_ij * Hebb_ij(t)``. ``w``, ``alpha`` and
the rates are trained across episodes by gradient descent; ``Hebb`` starts at zero every episode
and changes within it. The rules (pre = x_i(t-1), post = x_j(t), c = clip):

============  ==============================================================================
``none``      no plastic part (a plain RNN / LSTM)
``hebbian``   Hebb <- clip(Hebb + eta * pre_i post_j), eta a trained scalar
``simple``    Hebb <- clip(Hebb + M(t) * pre_i post_j)
``retroactive`` Hebb <- clip(Hebb + M(t) * E(t-1)); then E <- (1 - eta_e) E + eta_e * pre_i post_j
============  ==============================================================================

The neuromodulator ``M(t) = act(w_M . z + b_M)`` is one scalar per batch element. By default
(``modulator_input="new"``, as in the authors' code) z is the network's *new* activity (x(t) in the
RNN, h_t in the LSTM); with ``"previous"`` (the paper's text) it is the previous one (x(t-1),
h_{t-1}). The caller passes z; :attr:`PlasticityConfig.modulator_input` says which. With
``fanout="neuron"`` each post-synaptic neuron j gets its own rate ``v_j * M(t) + u_j``; with
``fanout="connection"`` each connection does, ``V_ij * M(t) + U_ij``. The ``hebbian`` rate eta is
one scalar (``eta_shape="scalar"``) or one per connection (``"connection"``). In the retroactive rule the trace is
updated with the *previous* eligibility trace before the eligibility trace takes this step's product,
so the eligibility of step t only reaches Hebb from step t+1 on.

Everything here is batch-first: pre (B, n_pre), post (B, n_post), traces (B, n_pre, n_post).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

RULES = ("none", "hebbian", "simple", "retroactive")
MODULATOR_ACTIVATIONS = ("tanh", "identity")
ALPHA_SHAPES = ("connection", "neuron")
ETA_SHAPES = ("scalar", "connection")
FANOUTS = ("none", "neuron", "connection")
FANOUT_INITS = ("ones", "default")
MODULATOR_INPUTS = ("new", "previous")
#: the value of ``alpha_grad_scale`` that means 1 / n_post (the authors' choice)
PER_NEURON_GRAD_SCALE = "1/N"


class Fanout(str):
    """A fan-out mode (``none``, ``neuron`` or ``connection``) that is falsy only for ``none``.

    Why a ``str`` subclass: ``fanout`` used to be a bool, and code outside this module (the RL
    kernel, its tests, the A2C config) still does ``if cfg.fanout`` / ``int(cfg.fanout)``; with
    this type those keep meaning "has fan-out" (1) or not (0), while the value compares, hashes
    and serialises as the plain string.
    """

    __slots__ = ()

    def __bool__(self) -> bool:
        return str.__ne__(self, "none")

    def __int__(self) -> int:
        return int(bool(self))


def normalize_fanout(value: Any) -> Fanout:
    """``True`` -> ``neuron``, ``False`` / ``None`` -> ``none`` (old configs), else one of FANOUTS."""
    if value is True:
        return Fanout("neuron")
    if value is False or value is None:
        return Fanout("none")
    if isinstance(value, str) and value in FANOUTS:
        return Fanout(value)
    raise ValueError(f"fanout must be one of {', '.join(FANOUTS)} (or a bool), got {value!r}")


def check_grad_scale(value: Any) -> float | str:
    """``alpha_grad_scale``: a float > 0, or ``"1/N"`` (1 / number of post-synaptic neurons)."""
    if value == PER_NEURON_GRAD_SCALE:
        return PER_NEURON_GRAD_SCALE
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(
                f"alpha_grad_scale must be a float > 0 or {PER_NEURON_GRAD_SCALE!r}, got {value!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"alpha_grad_scale must be a float > 0 or {PER_NEURON_GRAD_SCALE!r}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class PlasticityConfig:
    """How the recurrent connections of a layer change within an episode.

    Attributes:
        rule: one of ``none``, ``hebbian``, ``simple``, ``retroactive``.
        clip: traces are clamped to [-clip, clip] after every update.
        fanout: ``none`` (one scalar rate ``M``), ``neuron`` (``v_j * M + u_j``) or
            ``connection`` (``V_ij * M + U_ij``); modulated rules only. ``True`` / ``False`` (old
            configs) mean ``neuron`` / ``none``.
        modulator_activation: ``tanh`` (paper) or ``identity``.
        alpha: ``connection`` (one alpha per connection) or ``neuron`` (one per post-neuron).
        eta_init: initial Hebbian rate (``hebbian``); paper: 0.1 cue task, 0.01 maze.
        eta_e_init: initial eligibility rate (``retroactive``); paper: 0.1 cue task, 0.01 maze.
        init_scale: w and alpha are initialised as ``init_scale * U(0, 1)`` (paper: 0.01).
        eta_shape: ``scalar`` (one trained eta) or ``connection`` (one per connection);
            ``hebbian`` only.
        modulator_input: ``new`` (M reads the new activity) or ``previous`` (the previous one).
        alpha_init: alpha starts ``alpha_init * U(0, 1)``; ``None``: ``init_scale``.
        fanout_init: ``ones`` (v = 1, u = 0) or ``default`` (v, u ~ U(-1, 1), the default init of
            a ``Linear(1, N)``: bound 1 / sqrt(fan_in) with fan_in 1).
        alpha_grad_scale: the gradient reaching alpha is multiplied by this (a float > 0, or
            ``"1/N"`` for 1 / n_post, the authors' LSTM choice); applied by a gradient hook, so
            it is exact and leaves the forward unchanged.
    """

    rule: str = "retroactive"
    clip: float = 1.0
    fanout: Any = False
    modulator_activation: str = "tanh"
    alpha: str = "connection"
    eta_init: float = 0.1
    eta_e_init: float = 0.1
    init_scale: float = 0.01
    eta_shape: str = "scalar"
    modulator_input: str = "new"
    alpha_init: float | None = None
    fanout_init: str = "ones"
    alpha_grad_scale: Any = 1.0

    def __post_init__(self) -> None:
        # frozen dataclass: normalised values are stored with object.__setattr__
        object.__setattr__(self, "fanout", normalize_fanout(self.fanout))
        object.__setattr__(self, "alpha_grad_scale", check_grad_scale(self.alpha_grad_scale))
        if self.rule not in RULES:
            raise ValueError(f"unknown plasticity rule {self.rule!r}; allowed: {', '.join(RULES)}")
        if not self.clip > 0:
            raise ValueError(f"clip must be > 0, got {self.clip!r}")
        if self.modulator_activation not in MODULATOR_ACTIVATIONS:
            raise ValueError(
                f"unknown modulator activation {self.modulator_activation!r}; "
                f"allowed: {', '.join(MODULATOR_ACTIVATIONS)}"
            )
        if self.alpha not in ALPHA_SHAPES:
            raise ValueError(f"alpha must be one of {ALPHA_SHAPES}, got {self.alpha!r}")
        if self.fanout and not self.modulated:
            raise ValueError(f"fanout needs a modulated rule (simple or retroactive), got rule={self.rule!r}")
        if self.eta_shape not in ETA_SHAPES:
            raise ValueError(f"eta_shape must be one of {', '.join(ETA_SHAPES)}, got {self.eta_shape!r}")
        if self.eta_shape != "scalar" and self.rule != "hebbian":
            raise ValueError(f"eta_shape={self.eta_shape!r} needs the rule hebbian, got rule={self.rule!r}")
        if self.modulator_input not in MODULATOR_INPUTS:
            raise ValueError(
                f"modulator_input must be one of {', '.join(MODULATOR_INPUTS)}, got {self.modulator_input!r}"
            )
        if self.fanout_init not in FANOUT_INITS:
            raise ValueError(
                f"fanout_init must be one of {', '.join(FANOUT_INITS)}, got {self.fanout_init!r}"
            )
        if self.alpha_init is not None and not self.alpha_init >= 0:
            raise ValueError(f"alpha_init must be >= 0 (or None), got {self.alpha_init!r}")

    @property
    def plastic(self) -> bool:
        return self.rule != "none"

    @property
    def modulated(self) -> bool:
        return self.rule in ("simple", "retroactive")

    @property
    def eligibility(self) -> bool:
        return self.rule == "retroactive"

    @property
    def alpha_scale(self) -> float:
        """The scale of alpha's U(0, 1) init: ``alpha_init``, else ``init_scale``."""
        return self.init_scale if self.alpha_init is None else self.alpha_init

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fanout"] = str(self.fanout)  # plain JSON string, not the Fanout subclass
        return d


def modulator_saturation(m: Tensor, activation: str = "tanh", bound: float = 0.0) -> Tensor:
    """The mean of ``max(|u| - bound, 0)^2`` over ``m`` (any shape), u the modulator's
    pre-activation (M = act(u)): its mean square at ``bound`` 0.

    A loss term ``c * modulator_saturation(M)`` keeps M out of the tanh's flat ends: its gradient
    through tanh is 2(|u| - bound) sign(u) per element, largest where M is saturated (a penalty on
    M^2 would have 2M(1 - M^2), which vanishes there); a ``bound`` leaves |u| below it alone
    (|M| < 0.9 is |u| < 1.47). For tanh, u = atanh(M) is taken of M scaled by 1 - 1e-6, so it
    stays finite (at most 7.25) where M rounds to +-1.
    """
    if activation not in MODULATOR_ACTIVATIONS:
        raise ValueError(
            f"unknown modulator activation {activation!r}; allowed: {', '.join(MODULATOR_ACTIVATIONS)}"
        )
    u = torch.atanh(m * (1 - 1e-6)) if activation == "tanh" else m
    return torch.relu(u.abs() - bound).pow(2).mean()  # at bound 0: the mean of u^2


class PlasticState(NamedTuple):
    """Within-episode state of a plastic recurrent layer; all zeros at an episode start.

    Attributes:
        hidden: (B, N) activity x(t-1).
        hebb: (B, N, N) Hebbian trace; (B, 0, 0) when the rule is ``none``.
        elig: (B, N, N) eligibility trace; (B, 0, 0) unless the rule is ``retroactive``.
    """

    hidden: Tensor
    hebb: Tensor
    elig: Tensor

    def reset_where(self, starts: Tensor) -> PlasticState:
        """Zero the state of the batch elements whose episode starts: ``starts`` (B,) bool."""
        keep = (~starts).to(self.hidden.dtype)
        return PlasticState(
            self.hidden * keep[:, None],
            self.hebb * keep[:, None, None],
            self.elig * keep[:, None, None],
        )

    def detach(self) -> PlasticState:
        """Cut the autograd history (carry traces across truncated-BPTT segments)."""
        return PlasticState(self.hidden.detach(), self.hebb.detach(), self.elig.detach())


def fast_kernel_unsupported(config: PlasticityConfig) -> str | None:
    """Why the RL fast kernel (:mod:`bpm_agents.ops.plastic_rnn`) cannot run ``config``, for the options
    it does not implement (per-connection eta or fan-out, the modulator reading x(t-1)); ``None``
    when none of them is set. alpha's init, shape and gradient scale and the fan-out init need
    nothing from a kernel (init and a gradient hook on the parameter)."""
    if config.eta_shape != "scalar":
        return f"eta_shape={config.eta_shape!r} (the RL kernel has one scalar eta)"
    if config.fanout == "connection":
        return "fanout='connection' (the RL kernel has per-neuron fan-out only)"
    if config.modulated and config.modulator_input != "new":
        return f"modulator_input={config.modulator_input!r} (the RL kernel's modulator reads x(t))"
    return None


class KernelStatic(NamedTuple):
    """The non-trained options of a rule, as fused kernels take them."""

    rule: str
    fanout: bool
    act_tanh: bool
    clip: float


class KernelParams(NamedTuple):
    """The trained plastic parameters of one layer for fused kernels; ``None`` where absent.

    Attributes:
        alpha: (n_pre, n_post) (a per-neuron alpha is expanded). eta, eta_e: () scalars.
        mod_weight: (modulator_size,), mod_bias: (1,): M = act(mod_weight . z + mod_bias).
        fanout_weight, fanout_bias: (n_post,) v and u of the fan-out rate v_j M + u_j.
    """

    alpha: Tensor | None
    eta: Tensor | None
    eta_e: Tensor | None
    mod_weight: Tensor | None
    mod_bias: Tensor | None
    fanout_weight: Tensor | None
    fanout_bias: Tensor | None


class PlasticSynapses(nn.Module):
    """The plastic part of one recurrent weight matrix: alpha, the rates, the modulator, the rule.

    The network owns the fixed weights ``w``; this module gives the plastic contribution
    ``sum_i pre_i * alpha_ij * Hebb_ij`` and the next traces.

    Args:
        n_pre: pre-synaptic size (rows of the trace).
        n_post: post-synaptic size (columns of the trace).
        modulator_size: size of the activity the modulator reads (``z`` in M = act(w_M . z + b_M)).
        config: the rule and its options.
    """

    def __init__(self, n_pre: int, n_post: int, modulator_size: int, config: PlasticityConfig) -> None:
        super().__init__()
        self.n_pre, self.n_post, self.config = n_pre, n_post, config
        if config.plastic:
            shape = (n_pre, n_post) if config.alpha == "connection" else (n_post,)
            self.alpha = nn.Parameter(config.alpha_scale * torch.rand(shape))
            self._hook_alpha()
        if config.rule == "hebbian":
            eta_shape = () if config.eta_shape == "scalar" else (n_pre, n_post)
            self.eta = nn.Parameter(torch.full(eta_shape, float(config.eta_init)))
        if config.modulated:
            self.modulator = nn.Linear(modulator_size, 1)
        if config.fanout:
            rate_shape = (n_post,) if config.fanout == "neuron" else (n_pre, n_post)
            self.fanout_weight = nn.Parameter(torch.ones(rate_shape))  # v_j or V_ij
            self.fanout_bias = nn.Parameter(torch.zeros(rate_shape))  # u_j or U_ij
            if config.fanout_init == "default":
                self.reset_fanout()
        if config.eligibility:
            self.eta_e = nn.Parameter(torch.tensor(float(config.eta_e_init)))

    def _hook_alpha(self) -> None:
        """A hook on the alpha leaf: every gradient that reaches alpha (any path, fast kernels
        included) is multiplied by ``alpha_grad_scale`` before it is accumulated into .grad."""
        scale = self.alpha_grad_scale
        if scale != 1.0:
            self.alpha.register_hook(lambda g: g * scale)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # deepcopy and pickle rebuild the Parameter without its hooks: register it again
        super().__setstate__(state)
        if self.config.plastic:
            self._hook_alpha()

    @property
    def alpha_grad_scale(self) -> float:
        """The factor on alpha's gradient, ``"1/N"`` resolved to 1 / n_post."""
        scale = self.config.alpha_grad_scale
        return 1.0 / self.n_post if scale == PER_NEURON_GRAD_SCALE else float(scale)

    @torch.no_grad()
    def reset_fanout(self, generator: torch.Generator | None = None) -> None:
        """Set the fan-out rates by ``config.fanout_init``: ``ones`` (v = 1, u = 0) or ``default``
        (v, u ~ U(-1, 1), as ``nn.Linear(1, N)`` initialises its weight and bias: fan_in = 1)."""
        if not self.config.fanout:
            return
        if self.config.fanout_init == "ones":
            self.fanout_weight.fill_(1.0)
            self.fanout_bias.zero_()
        else:
            nn.init.uniform_(self.fanout_weight, -1.0, 1.0, generator=generator)
            nn.init.uniform_(self.fanout_bias, -1.0, 1.0, generator=generator)

    def initial_traces(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> tuple[Tensor, Tensor]:
        """Zero (hebb, elig) traces for a new episode, each (B, n_pre, n_post) or (B, 0, 0)."""
        dtype = dtype or torch.get_default_dtype()
        full = (batch_size, self.n_pre, self.n_post)
        empty = (batch_size, 0, 0)
        hebb = torch.zeros(full if self.config.plastic else empty, device=device, dtype=dtype)
        elig = torch.zeros(full if self.config.eligibility else empty, device=device, dtype=dtype)
        return hebb, elig

    def plastic_weights(self, hebb: Tensor) -> Tensor:
        """alpha * Hebb: (B, n_pre, n_post)."""
        return self.alpha * hebb

    def contribution(self, pre: Tensor, hebb: Tensor) -> Tensor | None:
        """Plastic input to the post-synaptic neurons, ``(pre @ (alpha * Hebb))``: (B, n_post).

        ``None`` for the rule ``none``, so callers add nothing.
        """
        if not self.config.plastic:
            return None
        return torch.bmm(pre.unsqueeze(1), self.plastic_weights(hebb)).squeeze(1)

    def modulation(self, modulator_input: Tensor) -> Tensor | None:
        """M(t) = act(w_M . z + b_M): (B, 1); ``None`` for non-modulated rules."""
        if not self.config.modulated:
            return None
        m = self.modulator(modulator_input)
        return torch.tanh(m) if self.config.modulator_activation == "tanh" else m

    def rate(self, m: Tensor) -> Tensor:
        """The learning rate applied to the trace, broadcastable to (B, n_pre, n_post).

        Scalar modulation gives (B, 1, 1); per-neuron fan-out (B, 1, n_post) = v_j * M + u_j;
        per-connection fan-out (B, n_pre, n_post) = V_ij * M + U_ij.
        """
        if self.config.fanout == "neuron":
            return (m * self.fanout_weight + self.fanout_bias).unsqueeze(1)
        if self.config.fanout == "connection":
            return m.unsqueeze(-1) * self.fanout_weight + self.fanout_bias
        return m.unsqueeze(-1)

    def modulator_source(self, previous: Tensor, new: Tensor) -> Tensor:
        """The activity the modulator reads, by ``config.modulator_input``: ``previous`` or ``new``."""
        return previous if self.config.modulator_input == "previous" else new

    def update(
        self, hebb: Tensor, elig: Tensor, pre: Tensor, post: Tensor, modulator_input: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """One step of the rule: returns (hebb, elig, M) after seeing ``pre`` -> ``post``.

        Args:
            hebb, elig: traces before the step, (B, n_pre, n_post) or (B, 0, 0).
            pre: (B, n_pre) pre-synaptic activity x(t-1).
            post: (B, n_post) post-synaptic activity x(t).
            modulator_input: (B, modulator_size) activity the modulator reads (the caller picks
                it with :meth:`modulator_source`).
        Returns:
            The new traces and M(t) of shape (B, 1) (``None`` for unmodulated rules).
        """
        rule, c = self.config.rule, self.config.clip
        if rule == "none":
            return hebb, elig, None
        product = pre.unsqueeze(2) * post.unsqueeze(1)  # (B, n_pre, n_post): pre_i * post_j
        if rule == "hebbian":  # eta: a scalar or (n_pre, n_post), broadcast over the batch
            return torch.clamp(hebb + self.eta * product, -c, c), elig, None
        m = self.modulation(modulator_input)
        assert m is not None  # simple and retroactive are the modulated rules
        if rule == "simple":
            return torch.clamp(hebb + self.rate(m) * product, -c, c), elig, m
        # retroactive: the trace takes the eligibility of the previous steps, then E takes this step
        hebb = torch.clamp(hebb + self.rate(m) * elig, -c, c)
        elig = (1 - self.eta_e) * elig + self.eta_e * product
        return hebb, elig, m

    def kernel_static(self) -> KernelStatic | None:
        """The rule's options as the RL fused kernel takes them; ``None`` if it has no fast path
        for them (see :func:`fast_kernel_unsupported`)."""
        cfg = self.config
        if fast_kernel_unsupported(cfg) is not None:
            return None
        return KernelStatic(cfg.rule, bool(cfg.fanout), cfg.modulator_activation == "tanh", float(cfg.clip))

    def kernel_params(self) -> KernelParams:
        """The plastic parameters as the fused kernels take them (views: gradients flow back)."""
        cfg = self.config
        alpha = None
        if cfg.plastic:
            alpha = self.alpha.expand(self.n_pre, self.n_post) if self.alpha.dim() == 1 else self.alpha
        return KernelParams(
            alpha=alpha,
            eta=self.eta if cfg.rule == "hebbian" else None,
            eta_e=self.eta_e if cfg.eligibility else None,
            mod_weight=self.modulator.weight.reshape(-1) if cfg.modulated else None,
            mod_bias=self.modulator.bias if cfg.modulated else None,
            fanout_weight=self.fanout_weight if cfg.fanout else None,
            fanout_bias=self.fanout_bias if cfg.fanout else None,
        )

    def extra_repr(self) -> str:
        return f"n_pre={self.n_pre}, n_post={self.n_post}, {self.config}"
