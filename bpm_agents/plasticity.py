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

The neuromodulator ``M(t) = act(w_M . z(t) + b_M)`` is computed from the network's *new* activity
z(t) (x(t) in the RNN, h_t in the LSTM): one scalar per batch element. With ``fanout`` each
post-synaptic neuron j gets its own rate ``v_j * M(t) + u_j``. In the retroactive rule the trace is
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


@dataclass(frozen=True)
class PlasticityConfig:
    """How the recurrent connections of a layer change within an episode.

    Attributes:
        rule: one of ``none``, ``hebbian``, ``simple``, ``retroactive``.
        clip: traces are clamped to [-clip, clip] after every update.
        fanout: per-neuron modulation ``eta_j = v_j * M + u_j`` instead of one scalar ``M``
            (modulated rules only).
        modulator_activation: ``tanh`` (paper) or ``identity``.
        alpha: ``connection`` (one alpha per connection) or ``neuron`` (one per post-neuron).
        eta_init: initial Hebbian rate (``hebbian``); paper: 0.1 cue task, 0.01 maze.
        eta_e_init: initial eligibility rate (``retroactive``); paper: 0.1 cue task, 0.01 maze.
        init_scale: w and alpha are initialised as ``init_scale * U(0, 1)`` (paper: 0.01).
    """

    rule: str = "retroactive"
    clip: float = 1.0
    fanout: bool = False
    modulator_activation: str = "tanh"
    alpha: str = "connection"
    eta_init: float = 0.1
    eta_e_init: float = 0.1
    init_scale: float = 0.01

    def __post_init__(self) -> None:
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
            raise ValueError(
                f"fanout needs a modulated rule (simple or retroactive), got rule={self.rule!r}"
            )

    @property
    def plastic(self) -> bool:
        return self.rule != "none"

    @property
    def modulated(self) -> bool:
        return self.rule in ("simple", "retroactive")

    @property
    def eligibility(self) -> bool:
        return self.rule == "retroactive"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    def __init__(
        self, n_pre: int, n_post: int, modulator_size: int, config: PlasticityConfig
    ) -> None:
        super().__init__()
        self.n_pre, self.n_post, self.config = n_pre, n_post, config
        if config.plastic:
            shape = (n_pre, n_post) if config.alpha == "connection" else (n_post,)
            self.alpha = nn.Parameter(config.init_scale * torch.rand(shape))
        if config.rule == "hebbian":
            self.eta = nn.Parameter(torch.tensor(float(config.eta_init)))
        if config.modulated:
            self.modulator = nn.Linear(modulator_size, 1)
        if config.fanout:
            self.fanout_weight = nn.Parameter(torch.ones(n_post))  # v_j
            self.fanout_bias = nn.Parameter(torch.zeros(n_post))  # u_j
        if config.eligibility:
            self.eta_e = nn.Parameter(torch.tensor(float(config.eta_e_init)))

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

        Scalar modulation gives (B, 1, 1); fan-out gives (B, 1, n_post) = v_j * M + u_j.
        """
        if self.config.fanout:
            return (m * self.fanout_weight + self.fanout_bias).unsqueeze(1)
        return m.unsqueeze(-1)

    def update(
        self, hebb: Tensor, elig: Tensor, pre: Tensor, post: Tensor, modulator_input: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """One step of the rule: returns (hebb, elig, M) after seeing ``pre`` -> ``post``.

        Args:
            hebb, elig: traces before the step, (B, n_pre, n_post) or (B, 0, 0).
            pre: (B, n_pre) pre-synaptic activity x(t-1).
            post: (B, n_post) post-synaptic activity x(t).
            modulator_input: (B, modulator_size) activity the modulator reads.
        Returns:
            The new traces and M(t) of shape (B, 1) (``None`` for unmodulated rules).
        """
        rule, c = self.config.rule, self.config.clip
        if rule == "none":
            return hebb, elig, None
        product = pre.unsqueeze(2) * post.unsqueeze(1)  # (B, n_pre, n_post): pre_i * post_j
        if rule == "hebbian":
            return torch.clamp(hebb + self.eta * product, -c, c), elig, None
        m = self.modulation(modulator_input)
        if rule == "simple":
            return torch.clamp(hebb + self.rate(m) * product, -c, c), elig, m
        # retroactive: the trace takes the eligibility of the previous steps, then E takes this step
        hebb = torch.clamp(hebb + self.rate(m) * elig, -c, c)
        elig = (1 - self.eta_e) * elig + self.eta_e * product
        return hebb, elig, m

    def kernel_static(self) -> KernelStatic | None:
        """The rule's options as the fused kernels take them; ``None`` if they have no fast path."""
        cfg = self.config
        return KernelStatic(
            cfg.rule, bool(cfg.fanout), cfg.modulator_activation == "tanh", float(cfg.clip)
        )

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
