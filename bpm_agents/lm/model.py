"""LSTM language models with a plastic recurrent path into the cell candidate.

The plastic LSTM cell (only the recurrent matrix into the candidate g is plastic)::

    i, f, o = sigmoid(W_x{i,f,o} x_t + b + W_h{i,f,o} h_{t-1})
    g_t     = tanh(W_xg x_t + b_g + h_{t-1} (W_hg + alpha * Hebb))
    c_t     = f * c_{t-1} + i * g_t ;   h_t = o * tanh(c_t)

then the trace update of :mod:`bpm_agents.plasticity` with pre = h_{t-1}, post = g_t and the
modulator reading h_t (``modulator_input="new"``, the authors' code) or h_{t-1} (``"previous"``,
the paper's text). The cell owns ``W_x``, ``b`` and ``W_h``; alpha, the rates and the
modulator are a :class:`~bpm_agents.plasticity.PlasticSynapses`. The variants differ only by the
:class:`~bpm_agents.plasticity.PlasticityConfig` they hand it:

=============  ===============================================================
``lstm``       rule ``none``: an ordinary LSTM (the baseline)
``hebbian``    differentiable plasticity (rule ``hebbian``)
``simple``     simple neuromodulation, fan-out per neuron (default) or per connection
``retroactive`` retroactive neuromodulation (eligibility trace), fan-out as ``simple``
=============  ===============================================================

Everything is batch-first: tokens (B, T), hidden (B, T, H), traces (B, H, H).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bpm_agents.config import opt, rename_keys
from bpm_agents.ops import plastic_lstm as fast_step
from bpm_agents.plasticity import (
    ALPHA_SHAPES,
    ETA_SHAPES,
    FANOUT_INITS,
    FANOUTS,
    MODULATOR_INPUTS,
    PlasticityConfig,
    PlasticSynapses,
    check_grad_scale,
)

if TYPE_CHECKING:  # pragma: no cover

    class _Cells(nn.ModuleList):
        """What ``LanguageModel.layers`` holds (torch's ModuleList is not generic)."""

        def __iter__(self) -> Iterator[PlasticLSTMCell]: ...


VARIANTS = ("lstm", "hebbian", "simple", "retroactive")
_RULE_OF_VARIANT = {"lstm": "none", "hebbian": "hebbian", "simple": "simple", "retroactive": "retroactive"}


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    return variant


def plasticity_for(
    variant: str,
    alpha: str = "connection",
    clip: float = 1.0,
    eta_init: float = 0.1,
    eta_e_init: float = 0.1,
    alpha_init: float = 0.01,
    eta_shape: str = "scalar",
    fanout: str = "neuron",
    fanout_init: str = "ones",
    modulator_input: str = "new",
    alpha_grad_scale: float | str = 1.0,
) -> PlasticityConfig:
    """The plasticity config of a variant.

    The options are set for every variant of a preset, so each is passed on only to the rules it
    applies to: ``eta_shape`` to ``hebbian``; ``fanout``, ``fanout_init`` and ``modulator_input``
    to the modulated rules (the modulated variants have fan-out unless ``fanout="none"``).
    """
    rule = _RULE_OF_VARIANT[check_variant(variant)]
    if fanout not in FANOUTS:
        raise ValueError(f"fanout must be one of {', '.join(FANOUTS)}, got {fanout!r}")
    modulated = rule in ("simple", "retroactive")
    return PlasticityConfig(
        rule=rule,
        clip=clip,
        fanout=fanout if modulated else "none",
        modulator_activation="tanh",
        alpha=alpha,
        eta_init=eta_init,
        eta_e_init=eta_e_init,
        init_scale=alpha_init,
        eta_shape=eta_shape if rule == "hebbian" else "scalar",
        modulator_input=modulator_input if modulated else "new",
        fanout_init=fanout_init,
        alpha_grad_scale=alpha_grad_scale,
    )


class LSTMState(NamedTuple):
    """State of one plastic LSTM layer, batch-first.

    Attributes:
        hidden: (B, H) h_{t-1}.
        cell: (B, H) c_{t-1}.
        hebb: (B, H, H) Hebbian trace, or (B, 0, 0) for the baseline.
        elig: (B, H, H) eligibility trace, or (B, 0, 0) unless retroactive.
    """

    hidden: Tensor
    cell: Tensor
    hebb: Tensor
    elig: Tensor

    def detach(self) -> LSTMState:
        """Cut the autograd history; the values carry over to the next BPTT segment."""
        return LSTMState(*(t.detach() for t in self))

    def reset_where(self, starts: Tensor) -> LSTMState:
        """Zero the state of the streams that start anew: ``starts`` (B,) bool (as
        :meth:`bpm_agents.plasticity.PlasticState.reset_where`)."""
        keep = (~starts).to(self.hidden.dtype)
        return LSTMState(
            self.hidden * keep[:, None], self.cell * keep[:, None],
            self.hebb * keep[:, None, None], self.elig * keep[:, None, None],
        )  # fmt: skip


class StepParts(NamedTuple):
    """One reference step of a :class:`PlasticLSTMCell` and what the statistics read.

    Attributes:
        state: the state after the step.
        fixed: (B, H) fixed recurrent input to the candidate, h_{t-1} W_hg.
        plastic: (B, H) plastic input h_{t-1} (alpha * Hebb), ``None`` for the baseline.
        modulation: (B, 1) M(t), ``None`` for unmodulated rules.
    """

    state: LSTMState
    fixed: Tensor
    plastic: Tensor | None
    modulation: Tensor | None


class PlasticLSTMCell(nn.Module):
    """One LSTM layer whose recurrent path into the cell candidate is plastic.

    Args:
        input_size: D.
        hidden_size: H.
        plasticity: the rule of the plastic path (rule ``none`` gives a plain LSTM).
        impl: ``auto`` (the C++ segment kernel of :mod:`bpm_agents.ops.plastic_lstm` on CPU for the
            plastic rules where it builds, else the reference), ``fast`` or ``reference`` (the
            rules of :mod:`bpm_agents.plasticity` through autograd). A plain attribute: it can be
            changed after construction.
    Parameters:
        weight_ih: (D, 4H) input weights, gate order [i, f, g, o].
        bias: (4H,).
        weight_hh: (H, 4H) fixed recurrent weights; row = pre-synaptic neuron.
        synapses: the plastic part of the (H, H) block of ``weight_hh`` that feeds g.
    """

    def __init__(
        self, input_size: int, hidden_size: int, plasticity: PlasticityConfig, impl: str = "auto"
    ) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be >= 1, got {input_size!r}, {hidden_size!r}")
        if impl not in fast_step.IMPLS:
            raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(fast_step.IMPLS)}")
        self.impl = impl
        self.input_size, self.hidden_size, self.plasticity = input_size, hidden_size, plasticity
        self.weight_ih = nn.Parameter(torch.empty(input_size, 4 * hidden_size))
        self.bias = nn.Parameter(torch.zeros(4 * hidden_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, 4 * hidden_size))
        self.synapses = PlasticSynapses(hidden_size, hidden_size, hidden_size, plasticity)

    def initial_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> LSTMState:
        """All-zero state for ``batch_size`` streams."""
        device = device if device is not None else self.weight_hh.device
        dtype = dtype or self.weight_hh.dtype
        zeros = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        hebb, elig = self.synapses.initial_traces(batch_size, device, dtype)
        return LSTMState(zeros, zeros.clone(), hebb, elig)

    def input_drive(self, x: Tensor) -> Tensor:
        """W_x x + b for all steps at once: (B, T, D) -> (B, T, 4H)."""
        return torch.addmm(self.bias, x.reshape(-1, self.input_size), self.weight_ih).view(
            *x.shape[:-1], 4 * self.hidden_size
        )

    # The recurrent cores share one contract with :class:`bpm_agents.networks.PlasticRNN`:
    # ``initial_state(B)``, ``step(x, state) -> (state, M or None)`` and
    # ``unroll(inputs, state, episode_starts) -> (hidden (B, T, H), M (B, T) or None, state)``.

    def step(self, x: Tensor, state: LSTMState) -> tuple[LSTMState, Tensor | None]:
        """One time step from the input ``x`` (B, D): the new state and M(t) (B, 1) (``None``
        for unmodulated rules)."""
        drive = self.input_drive(x.unsqueeze(1))[:, 0]
        if fast_step.use_fast(self, drive, self.impl):
            new = LSTMState(*fast_step.step(self, drive, state))
            return new, self._modulation(state.hidden.unsqueeze(1), new.hidden.unsqueeze(1))
        parts = self.reference_step(drive, state)
        return parts.state, parts.modulation

    def step_drive(self, drive: Tensor, state: LSTMState) -> LSTMState:
        """One time step from the precomputed input drive ``drive`` (B, 4H) (see :meth:`input_drive`)."""
        if fast_step.use_fast(self, drive, self.impl):
            return LSTMState(*fast_step.step(self, drive, state))
        return self.reference_step(drive, state).state

    def unroll(
        self, inputs: Tensor, state: LSTMState, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, LSTMState]:
        """Run a sequence: hidden (B, T, H), M(t) (B, T) (``None`` for unmodulated rules) and the
        final state. Where ``episode_starts`` (B, T) is True the state is zeroed before that step."""
        if episode_starts is None:
            hidden, final = self(inputs, state)
            previous = torch.cat([state.hidden.unsqueeze(1), hidden[:, :-1]], dim=1)
            return hidden, self._modulation(previous, hidden), final
        hiddens, mods = [], []
        for t in range(inputs.shape[1]):
            state = state.reset_where(episode_starts[:, t])
            state, m = self.step(inputs[:, t], state)
            hiddens.append(state.hidden)
            mods.append(m)
        # every step of a modulated rule returns M, so none is None when the first is not
        return (
            torch.stack(hiddens, dim=1),
            None if mods[0] is None else torch.cat(cast("list[Tensor]", mods), dim=1),
            state,
        )

    def _modulation(self, previous: Tensor, hidden: Tensor) -> Tensor | None:
        """M(t) (B, T) recomputed from the activities (B, T, H) the modulator reads; the fast
        kernel does not return it (it is a dot product per step)."""
        if not self.synapses.config.modulated:
            return None
        z = self.synapses.modulator_source(previous, hidden)
        m = self.synapses.modulation(z.reshape(-1, z.shape[-1]))
        assert m is not None
        return m.view(z.shape[0], z.shape[1])

    def reference_step(self, drive: Tensor, state: LSTMState) -> StepParts:
        """One step of the reference arithmetic, with the parts the plasticity statistics read."""
        h_prev = state.hidden
        gates = torch.addmm(drive, h_prev, self.weight_hh)
        i, f, g, o = gates.chunk(4, dim=1)
        H = self.hidden_size
        fixed = h_prev @ self.weight_hh[:, 2 * H : 3 * H]  # W_hg h_{t-1}, only for the statistics
        plastic = self.synapses.contribution(h_prev, state.hebb)
        if plastic is not None:
            g = g + plastic
        g = torch.tanh(g)
        c = torch.sigmoid(f) * state.cell + torch.sigmoid(i) * g
        h = torch.sigmoid(o) * torch.tanh(c)
        z = self.synapses.modulator_source(h_prev, h)
        hebb, elig, m = self.synapses.update(state.hebb, state.elig, h_prev, g, z)
        return StepParts(LSTMState(h, c, hebb, elig), fixed, plastic, m)

    def forward(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """Run a segment.

        Args:
            x: (B, T, D) inputs.
            state: state before the first step.
        Returns:
            hidden (B, T, H) and the state after the last step.
        """
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape (B, T, {self.input_size}), got {tuple(x.shape)}")
        drive = self.input_drive(x)
        if fast_step.use_fast(self, drive, self.impl):
            out, last = fast_step.sequence(self, drive, state)
            return out, LSTMState(*last)
        outputs = []
        for t in range(x.shape[1]):
            state = self.step_drive(drive[:, t], state)
            outputs.append(state.hidden)
        return torch.stack(outputs, dim=1), state

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}"


class LockedDropout(nn.Module):
    """Dropout whose mask is shared over time (one mask per sequence and feature), batch-first.

    Draws come from ``generator`` (set by the owner) so a seed fixes the masks.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p!r}")
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, F) -> (B, T, F)."""
        if not self.training or self.p == 0:
            return x
        keep = torch.full((x.shape[0], 1, x.shape[2]), 1 - self.p, device=x.device, dtype=x.dtype)
        mask = torch.bernoulli(keep, generator=self.generator) / (1 - self.p)
        return x * mask


#: LMConfig fields renamed (old name in saved configs -> field): the same names as the RL agents'
RENAMED_FIELDS = {"hebb_clip": "trace_clip", "init_scale": "weight_init"}


@dataclass(frozen=True)
class LMConfig:
    """Architecture of a :class:`LanguageModel`.

    Attributes:
        variant: ``lstm``, ``hebbian``, ``simple`` or ``retroactive``.
        vocab_size: V.
        emb_size: E, the embedding size.
        hidden_sizes: H of each layer; with ``tied`` the last must equal ``emb_size``.
        tied: decoder weight = embedding weight.
        alpha: ``connection`` or ``neuron`` (one alpha per post-synaptic neuron).
        trace_clip: traces are clamped to [-trace_clip, trace_clip] (saved before as ``hebb_clip``).
        eta_init, eta_e_init, alpha_init: initial plasticity rates and alpha scale (alpha starts
            alpha_init * U(0, 1)).
        weight_init: other weights are initialised U(-weight_init, weight_init) (saved before as
            ``init_scale``).
        eta_shape: ``scalar`` or ``connection``: one Hebbian rate eta per layer or per
            connection (``hebbian`` only).
        fanout: ``neuron`` (v_j M + u_j), ``connection`` (V_ij M + U_ij) or ``none`` (M): the
            rates of the modulated variants.
        fanout_init: ``ones`` (v = 1, u = 0) or ``default`` (v, u ~ U(-1, 1), as Linear(1, N)).
        modulator_input: ``new`` (M reads h_t) or ``previous`` (M reads h_{t-1}).
        alpha_grad_scale: alpha's gradient is multiplied by this (float > 0 or ``"1/N"``).
        plastic_w_init: the fixed plastic matrix W_hg is initialised U(-s, s) with this s
            (``None``: ``weight_init``), for the plastic variants only.
        dropout_input, dropout_hidden, dropout_output: locked dropout on the embedding, between
            layers, and before the decoder.
    """

    variant: str = field(default="lstm", metadata=opt("model variant", choices=VARIANTS))
    vocab_size: int = field(default=10_000, metadata=opt("V, set from the corpus", cli=False))
    emb_size: int = field(default=200, metadata=opt("E, the embedding size"))
    hidden_sizes: tuple[int, ...] = field(
        default=(200, 200),
        metadata=opt(
            "hidden size of each layer, e.g. '200,200' (matched to the parameter budget unless --no-match)"
        ),
    )
    tied: bool = field(default=False, metadata=opt("decoder weight = embedding weight"))
    alpha: str = field(
        default="connection", metadata=opt("alpha per connection or per neuron", choices=ALPHA_SHAPES)
    )
    trace_clip: float = field(
        default=1.0,
        metadata=opt(
            "the Hebbian (and eligibility) traces are clamped to [-c, c]",
            flag="trace_clip",
            aliases=["hebb_clip"],
        ),
    )
    eta_init: float = field(default=0.1, metadata=opt("initial Hebbian rate eta"))
    eta_e_init: float = field(default=0.1, metadata=opt("initial eligibility rate eta_e"))
    alpha_init: float = field(default=0.01, metadata=opt("alpha starts alpha_init * U(0, 1)"))
    weight_init: float = field(
        default=0.1,
        metadata=opt("the weights start U(-s, s)", aliases=["init_scale"]),
    )
    dropout_input: float = field(default=0.0, metadata=opt("locked dropout on the embedding"))
    dropout_hidden: float = field(default=0.0, metadata=opt("locked dropout between layers"))
    dropout_output: float = field(default=0.0, metadata=opt("locked dropout before the decoder"))
    eta_shape: str = field(
        default="scalar",
        metadata=opt("hebbian: one eta per layer (scalar) or per connection", choices=ETA_SHAPES),
    )
    fanout: str = field(
        default="neuron",
        metadata=opt(
            "modulated variants: rate M, v_j M + u_j (neuron) or V_ij M + U_ij (connection)", choices=FANOUTS
        ),
    )
    fanout_init: str = field(
        default="ones",
        metadata=opt(
            "fan-out init: ones (v = 1, u = 0) or default (v, u ~ U(-1, 1), as Linear(1, N))",
            choices=FANOUT_INITS,
        ),
    )
    modulator_input: str = field(
        default="new", metadata=opt("M reads h_t (new) or h_{t-1} (previous)", choices=MODULATOR_INPUTS)
    )
    alpha_grad_scale: float | str = field(
        default=1.0,
        metadata=opt(
            "multiply alpha's gradient by this: a number > 0 or 1/N (1 / hidden size, the authors' choice)"
        ),
    )
    plastic_w_init: float | None = field(
        default=None,
        metadata=opt("plastic variants: W_hg starts U(-s, s)", default="--weight-init"),
    )

    def __post_init__(self) -> None:
        check_variant(self.variant)
        object.__setattr__(self, "alpha_grad_scale", check_grad_scale(self.alpha_grad_scale))
        if self.plastic_w_init is not None and not self.plastic_w_init > 0:
            raise ValueError(f"plastic_w_init must be > 0 (or None), got {self.plastic_w_init!r}")
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        if self.vocab_size < 1 or self.emb_size < 1:
            raise ValueError(f"vocab_size and emb_size must be >= 1, got {self.vocab_size}, {self.emb_size}")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be non-empty and >= 1, got {self.hidden_sizes!r}")
        if self.tied and self.hidden_sizes[-1] != self.emb_size:
            raise ValueError(
                f"tied weights need the last hidden size ({self.hidden_sizes[-1]}) "
                f"to equal emb_size ({self.emb_size})"
            )
        if not self.weight_init > 0:
            raise ValueError(f"weight_init must be > 0, got {self.weight_init!r}")
        self.plasticity()  # validates the plasticity options
        for v in VARIANTS:  # and for every variant, so a preset's options are checked up front
            plasticity_for(v, self.alpha, self.trace_clip, self.eta_init, self.eta_e_init, self.alpha_init,
                           self.eta_shape, self.fanout, self.fanout_init, self.modulator_input,
                           self.alpha_grad_scale)  # fmt: skip

    def plasticity(self) -> PlasticityConfig:
        return plasticity_for(
            self.variant,
            self.alpha,
            self.trace_clip,
            self.eta_init,
            self.eta_e_init,
            self.alpha_init,
            self.eta_shape,
            self.fanout,
            self.fanout_init,
            self.modulator_input,
            self.alpha_grad_scale,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LMConfig:
        """Rebuild from :meth:`to_dict`; fields added later (the plasticity options) take their
        defaults, which are the behaviour of the configs saved before they existed, and the old
        names of renamed fields (:data:`RENAMED_FIELDS`) are read as the new ones."""
        d = rename_keys(d, RENAMED_FIELDS)
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown LMConfig fields {sorted(unknown)}; allowed: {sorted(known)}")
        return cls(**d)


class LanguageModel(nn.Module):
    """Embedding -> L plastic LSTM layers -> softmax decoder (tied or untied).

    ``impl`` picks each layer's step implementation (see :class:`PlasticLSTMCell`); it is a
    run-time choice, not part of the architecture, so it is not in :class:`LMConfig`.
    """

    def __init__(
        self, config: LMConfig, generator: torch.Generator | None = None, impl: str = "auto"
    ) -> None:
        super().__init__()
        self.config = config
        plasticity = config.plasticity()
        self.embedding = nn.Embedding(config.vocab_size, config.emb_size)
        sizes = (config.emb_size, *config.hidden_sizes)
        self.layers = cast(
            "_Cells",
            nn.ModuleList(
                PlasticLSTMCell(sizes[k], sizes[k + 1], plasticity, impl)
                for k in range(len(config.hidden_sizes))
            ),
        )
        self.decoder = nn.Linear(config.hidden_sizes[-1], config.vocab_size)
        if config.tied:
            self.decoder.weight = self.embedding.weight
        self.drop_input = LockedDropout(config.dropout_input)
        self.drop_hidden = LockedDropout(config.dropout_hidden)
        self.drop_output = LockedDropout(config.dropout_output)
        if self.embedding.weight.device.type != "meta":
            self.reset_parameters(generator)

    def set_impl(self, impl: str) -> None:
        """Switch every layer's step between ``auto``, ``fast`` and ``reference``."""
        if impl not in fast_step.IMPLS:
            raise ValueError(f"unknown impl {impl!r}; allowed: {', '.join(fast_step.IMPLS)}")
        for layer in self.layers:
            layer.impl = impl

    def set_dropout_generator(self, generator: torch.Generator | None) -> None:
        for d in (self.drop_input, self.drop_hidden, self.drop_output):
            d.generator = generator

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Weights U(-s, s) with s = weight_init (W_hg: ``plastic_w_init`` if set, plastic variants);
        alpha alpha_init * U(0, 1); the modulator weight U(-s, s), its bias 0; fan-out by
        ``fanout_init``; eta, eta_e from the config. Options at their defaults draw nothing
        extra, so older configs get the same weights from the same seed."""
        s = self.config.weight_init
        nn.init.uniform_(self.embedding.weight, -s, s, generator=generator)
        if not self.config.tied:
            nn.init.uniform_(self.decoder.weight, -s, s, generator=generator)
        self.decoder.bias.zero_()
        for layer in self.layers:
            nn.init.uniform_(layer.weight_ih, -s, s, generator=generator)
            nn.init.uniform_(layer.weight_hh, -s, s, generator=generator)
            layer.bias.zero_()
            syn = layer.synapses
            pw = self.config.plastic_w_init
            if pw is not None and layer.plasticity.plastic:
                H = layer.hidden_size
                nn.init.uniform_(layer.weight_hh[:, 2 * H : 3 * H], -pw, pw, generator=generator)
            if hasattr(syn, "alpha"):
                nn.init.uniform_(syn.alpha, 0.0, self.config.alpha_init, generator=generator)
            if hasattr(syn, "modulator"):
                nn.init.uniform_(syn.modulator.weight, -s, s, generator=generator)
                syn.modulator.bias.zero_()
            if layer.plasticity.fanout:
                if layer.plasticity.fanout_init == "default":
                    syn.reset_fanout(generator)
                else:  # "ones": no draw (the old behaviour)
                    syn.reset_fanout()

    @torch.no_grad()
    def project_parameters(self) -> None:
        """Keep the eligibility rate eta_e in [0, 1] (call after each optimizer step).

        E <- (1 - eta_e) E + eta_e pre post is then a running average, bounded by the
        activities; outside [0, 1] the unclipped E grows geometrically and one large SGD step on
        eta_e (whose gradient sums over B * H * H terms) turns the model to NaN within a few steps.
        """
        for layer in self.layers:
            eta_e = getattr(layer.synapses, "eta_e", None)
            if eta_e is not None:
                eta_e.clamp_(0.0, 1.0)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> list[LSTMState]:
        """Zero state of every layer for ``batch_size`` streams."""
        return [layer.initial_state(batch_size, device) for layer in self.layers]

    def forward(self, tokens: Tensor, state: list[LSTMState]) -> tuple[Tensor, list[LSTMState]]:
        """Logits of the next token.

        Args:
            tokens: (B, T) int64.
            state: per layer, from :meth:`initial_state` or a previous call.
        Returns:
            logits (B, T, V) and the new state (still attached to the graph; detach between
            BPTT segments).
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, T), got {tuple(tokens.shape)}")
        if len(state) != len(self.layers):
            raise ValueError(f"state has {len(state)} layers, the model {len(self.layers)}")
        x = self.drop_input(self.embedding(tokens))
        new_state = []
        for k, (layer, s) in enumerate(zip(self.layers, state)):
            x, s = layer(x, s)
            new_state.append(s)
            if k < len(self.layers) - 1:
                x = self.drop_hidden(x)
        return self.decoder(self.drop_output(x)), new_state


def count_parameters(module: nn.Module) -> int:
    """Number of distinct trainable scalars (tied weights counted once)."""
    return sum(p.numel() for p in module.parameters())


def config_parameters(config: LMConfig) -> int:
    """Parameter count of the model ``config`` describes, built on the meta device (no memory)."""
    with torch.device("meta"):
        return count_parameters(LanguageModel(config))


def with_hidden(config: LMConfig, hidden: int) -> LMConfig:
    """``config`` with every free layer set to ``hidden``; with tied weights the last layer keeps
    the embedding size."""
    n = len(config.hidden_sizes)
    sizes = [hidden] * n
    if config.tied:
        sizes[-1] = config.emb_size
    return replace(config, hidden_sizes=tuple(sizes))


def match_hidden_size(
    config: LMConfig, target: int, low: int = 1, high: int = 20_000
) -> tuple[LMConfig, int]:
    """Largest hidden size whose model has at most ``target`` parameters.

    Free layers (all, or all but the tied last one) get the same size H; the count grows with H,
    so a bisection finds it.

    Returns:
        (config with that hidden size, its parameter count).
    Raises:
        ValueError: if even ``low`` exceeds the target.
    """
    count = lambda h: config_parameters(with_hidden(config, h))  # noqa: E731
    if count(low) > target:
        raise ValueError(
            f"target {target} parameters is below the smallest {config.variant} model ({count(low)})"
        )
    while count(high) <= target:
        low, high = high, high * 2
    while high - low > 1:  # invariant: count(low) <= target < count(high)
        mid = (low + high) // 2
        if count(mid) <= target:
            low = mid
        else:
            high = mid
    matched = with_hidden(config, low)
    return matched, count(low)


def matched_configs(
    base: LMConfig, variants: Sequence[str] = VARIANTS, target: int | None = None
) -> dict[str, tuple[LMConfig, int]]:
    """Per variant, the hidden-size-matched config and its count. Default target: the count of
    ``base`` with variant ``lstm`` (the baseline at its nominal size)."""
    if target is None:
        target = config_parameters(replace(base, variant="lstm"))
    return {v: match_hidden_size(replace(base, variant=v), target) for v in variants}


def logits_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy (nats per token): logits (B, T, V), targets (B, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


__all__: list[str] = [
    "VARIANTS",
    "LMConfig",
    "LSTMState",
    "LanguageModel",
    "LockedDropout",
    "PlasticLSTMCell",
    "StepParts",
    "config_parameters",
    "count_parameters",
    "match_hidden_size",
    "matched_configs",
    "plasticity_for",
    "with_hidden",
]
