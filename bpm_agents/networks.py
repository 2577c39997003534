"""PlasticRNN: the recurrent core of the RL agents, a tanh RNN whose recurrent weights are plastic.

    x_j(t) = tanh( W_in u(t) + b + sum_i [ w_ij + alpha_ij * Hebb_ij(t) ] x_i(t-1) )

followed by the trace update of :mod:`bpm_agents.plasticity` with pre = x(t-1), post = x(t) and the
modulator reading x(t) (``modulator_input="new"``) or x(t-1) (``"previous"``). The network owns ``W_in``, ``b`` and ``w``; the plastic part is a
:class:`~bpm_agents.plasticity.PlasticSynapses`.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from bpm_agents.plasticity import PlasticityConfig, PlasticState, PlasticSynapses

UNROLL_IMPLS = ("auto", "reference", "fast", "chunked")

#: steps per recomputed segment of the ``chunked`` unroll (memory ~ T / k traces instead of ~9 T)
CHUNK_STEPS = 16


class PlasticRNN(nn.Module):
    """Plastic tanh RNN, batch first.

    Its contract, which :class:`bpm_agents.lm.model.PlasticLSTMCell` follows too:
    ``initial_state(B)``, ``step(x, state) -> (state, M or None)`` and
    ``unroll(inputs, state, episode_starts) -> (hidden (B, T, N), M (B, T) or None, state)``.

    Args:
        input_size: D, size of u(t).
        hidden_size: N.
        plasticity: the rule of the recurrent connections.
    """

    def __init__(self, input_size: int, hidden_size: int, plasticity: PlasticityConfig) -> None:
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size!r}")
        if input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {input_size!r}")
        self.input_size, self.hidden_size, self.plasticity = input_size, hidden_size, plasticity
        self.input = nn.Linear(input_size, hidden_size)
        # w[i, j]: from pre-synaptic i to post-synaptic j, as in the equation above
        self.w = nn.Parameter(plasticity.init_scale * torch.rand(hidden_size, hidden_size))
        self.synapses = PlasticSynapses(hidden_size, hidden_size, hidden_size, plasticity)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> PlasticState:
        """All-zero state for ``batch_size`` new episodes."""
        device = device if device is not None else self.w.device
        hidden = torch.zeros(batch_size, self.hidden_size, device=device, dtype=self.w.dtype)
        hebb, elig = self.synapses.initial_traces(batch_size, device, self.w.dtype)
        return PlasticState(hidden, hebb, elig)

    def step(
        self, u: Tensor, state: PlasticState, impl: str = "reference"
    ) -> tuple[PlasticState, Tensor | None]:
        """One time step.

        Args:
            u: (B, D) input.
            state: state before the step.
            impl: ``reference`` (the rules of :mod:`bpm_agents.plasticity`, op by op), or
                ``auto`` / ``fast`` as in :meth:`unroll` (a one-step sequence through the fused
                kernel: same numbers to rounding, several times faster when acting).
        Returns:
            (new state, M(t) of shape (B, 1) or ``None`` for unmodulated rules).
        """
        if impl != "reference":
            if impl not in UNROLL_IMPLS:
                raise ValueError(f"impl must be one of {UNROLL_IMPLS}, got {impl!r}")
            _, mods, new_state = self.unroll(u.unsqueeze(1), state, impl=impl)
            return new_state, mods
        pre = state.hidden
        drive = self.input(u) + pre @ self.w
        plastic = self.synapses.contribution(pre, state.hebb)
        if plastic is not None:
            drive = drive + plastic
        x = torch.tanh(drive)
        z = self.synapses.modulator_source(pre, x)
        hebb, elig, m = self.synapses.update(state.hebb, state.elig, pre, x, z)
        return PlasticState(x, hebb, elig), m

    def unroll(
        self,
        inputs: Tensor,
        state: PlasticState,
        episode_starts: Tensor | None = None,
        impl: str = "auto",
    ) -> tuple[Tensor, Tensor | None, PlasticState]:
        """Run a whole sequence.

        Args:
            inputs: (B, T, D).
            state: state before the first step.
            episode_starts: optional (B, T) bool; where True the state is zeroed before that step.
            impl: ``reference`` (step by step, plain autograd), ``fast`` (the fused sequence
                kernel of :mod:`bpm_agents.ops.plastic_rnn`; ValueError where it does not apply),
                ``chunked`` (the reference in segments of :data:`CHUNK_STEPS` steps under
                ``torch.utils.checkpoint``: any device, the traces kept only at segment
                boundaries, each segment recomputed in the backward) or ``auto`` (fast where
                :func:`bpm_agents.ops.plastic_rnn.supports` says so; else chunked when
                gradients are needed and the rule is plastic; else the reference).
        Returns:
            hidden (B, T, N), modulators (B, T) or ``None``, final state.
        """
        if impl not in UNROLL_IMPLS:
            raise ValueError(f"unknown unroll impl {impl!r}; allowed: {', '.join(UNROLL_IMPLS)}")
        if inputs.dim() != 3 or inputs.shape[-1] != self.input_size:
            raise ValueError(f"inputs must have shape (B, T, {self.input_size}), got {tuple(inputs.shape)}")
        if impl == "reference":
            return self.reference_unroll(inputs, state, episode_starts)
        if impl == "chunked":
            return self.chunked_unroll(inputs, state, episode_starts)
        from bpm_agents.ops import plastic_rnn as fast_unroll  # late: the kernel builds at first use

        if impl == "fast":
            reason = fast_unroll.unsupported_reason(self, inputs)
            if reason is not None:
                raise ValueError(f"impl='fast' is not available here: {reason}; use impl='reference'")
            return fast_unroll.unroll(self, inputs, state, episode_starts)
        if fast_unroll.supports(self, inputs):
            return fast_unroll.unroll(self, inputs, state, episode_starts)
        if torch.is_grad_enabled() and self.plasticity.plastic and inputs.shape[1] > CHUNK_STEPS:
            return self.chunked_unroll(inputs, state, episode_starts)
        return self.reference_unroll(inputs, state, episode_starts)

    def chunked_unroll(
        self,
        inputs: Tensor,
        state: PlasticState,
        episode_starts: Tensor | None = None,
        chunk: int = CHUNK_STEPS,
    ) -> tuple[Tensor, Tensor | None, PlasticState]:
        """The reference unroll in segments of ``chunk`` steps, each under activation checkpointing.

        Autograd keeps only each segment's inputs (the state at its start: O(T / chunk) traces)
        and recomputes the segment in the backward, instead of keeping about nine (B, N, N)
        tensors per step. Same numbers as :meth:`reference_unroll` (the same ops in the same
        order), on any device.
        """
        from torch.utils.checkpoint import checkpoint

        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk!r}")
        hiddens, modulators = [], []
        for t0 in range(0, inputs.shape[1], chunk):
            starts = None if episode_starts is None else episode_starts[:, t0 : t0 + chunk]
            hidden, mods, *traces = checkpoint(
                self._segment, inputs[:, t0 : t0 + chunk], starts, *state, use_reentrant=False
            )
            state = PlasticState(hidden[:, -1], *traces)
            hiddens.append(hidden)
            modulators.append(mods)
        mods = torch.cat(modulators, dim=1) if self.plasticity.modulated else None
        return torch.cat(hiddens, dim=1), mods, state

    def _segment(
        self, inputs: Tensor, starts: Tensor | None, hidden: Tensor, hebb: Tensor, elig: Tensor
    ) -> tuple[Tensor, ...]:
        """One segment of :meth:`chunked_unroll` (tensors only, as checkpoint needs)."""
        out, mods, final = self.reference_unroll(inputs, PlasticState(hidden, hebb, elig), starts)
        if mods is None:
            mods = out.new_zeros(out.shape[0], 0)
        return out, mods, final.hebb, final.elig

    def reference_unroll(
        self, inputs: Tensor, state: PlasticState, episode_starts: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, PlasticState]:
        """Step-by-step unroll with plain autograd: the definition the fast path must match."""
        hiddens, modulators = [], []
        for t in range(inputs.shape[1]):
            if episode_starts is not None:
                state = state.reset_where(episode_starts[:, t])
            state, m = self.step(inputs[:, t], state)
            hiddens.append(state.hidden)
            modulators.append(m)
        # every step of a modulated rule returns M, so none is None when the first is not
        mods = torch.cat(cast(list[Tensor], modulators), dim=1) if modulators[0] is not None else None
        return torch.stack(hiddens, dim=1), mods, state
