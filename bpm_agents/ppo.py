"""Plastic PPO: the plastic recurrent actor-critic trained by PPO over whole episodes.

One update:

1. **Act** B lock-step episodes from the zero plastic state (as for A2C, through the fused actor,
   which records the forward).
2. **Score** the rollout with the acting parameters: log pi_old(a_t) and V_old(t) come from the
   recorded activities (no second forward), then GAE(lambda) advantages with V = 0 after the last
   step (the episodes end there; ``gae_lambda=1`` gives Monte-Carlo returns, R_t - V_t).
3. **Learn** for ``n_epochs`` epochs; each epoch shuffles the B episodes (a seeded generator)
   into ``n_minibatches`` minibatches of whole episodes. A minibatch is replayed from the episode
   start with the current parameters and full backpropagation through time, so Hebbian traces are
   never stored per step; the very first minibatch, while the parameters are still those of
   acting, reuses the acting record (only its backward runs). With ``minibatch_unit="steps"`` an
   epoch shuffles the B * T (episode, step) pairs instead, and each minibatch replays all B
   episodes and takes the loss on its pairs only: minibatches that mix every episode, as
   feed-forward PPO's do, still with whole-episode backpropagation, at B / n_minibatches times
   the replay work. Loss per minibatch::

       -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + value_coef * (V - R)^2 + entropy term

   with A normalised per minibatch or once over the rollout (``normalize_advantage``,
   ``advantage_scope``), the value error optionally clipped
   around V_old (``value_clip``), the entropy term ``-entropy_coef * H(pi)`` (default) or the
   paper's ``entropy_coef * sum_a pi(a)^2``, Adam and a gradient-norm clip.

Defaults are the usual ones of PPO implementations (lr 3e-4, gamma 0.99, lambda 0.95, clip 0.2,
4 epochs, value coefficient 0.5, entropy 0.01, gradient clip 0.5, Adam eps 1e-5); the network
(rule, hidden size, plasticity options) follows the task defaults as for A2C.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from torch import Tensor

from bpm_agents.a2c import A2CConfig, A2CTrainer, NonFiniteLossError, Rollout, entropy_term
from bpm_agents.config import opt
from bpm_envs.batched import BatchedVectorEnv
from bpm_envs.checks import require_int

#: what ``normalize_advantage`` normalises over
ADVANTAGE_SCOPES = ("minibatch", "rollout")
#: what a minibatch is made of (``PPOConfig.minibatch_unit``)
MINIBATCH_UNITS = ("episodes", "steps")

__all__ = ["PPOConfig", "PlasticPPOTrainer", "gae", "ppo_loss", "PPOLossTerms"]


@dataclass(frozen=True)
class PPOConfig(A2CConfig):
    """Hyper-parameters of a plastic PPO run; the A2C fields keep their meaning.

    ``None`` fields take the task's default (hidden size and plasticity rates, see
    :data:`bpm_agents.a2c.TASK_DEFAULTS`).
    """

    gamma: float = 0.99
    lr: float | None = 3e-4
    adam_eps: float | None = 1e-5
    grad_clip: float | None = 0.5
    value_coef: float = 0.5
    entropy_coef: float | None = 0.01
    entropy_mode: str = "entropy"
    gae_lambda: float = field(default=0.95, metadata=opt("GAE lambda (1 = Monte-Carlo returns)"))
    clip_range: float = field(default=0.2, metadata=opt("policy ratio clip epsilon"))
    value_clip: float | None = field(
        default=None,
        metadata=opt("clip the value change around the acting value", default="off"),
    )
    n_epochs: int = field(default=4, metadata=opt("epochs over each rollout", aliases=["ppo_epochs"]))
    n_minibatches: int = field(
        default=3, metadata=opt("minibatches per epoch (of whole episodes, or of steps)", flag="minibatches")
    )
    minibatch_unit: str = field(
        default="episodes",
        metadata=opt(
            "what a minibatch is drawn from: whole episodes, or random (episode, step) pairs of the "
            "rollout (each minibatch then replays every episode from its start and takes the loss "
            "on its steps only: n_minibatches replays per epoch)",
            choices=MINIBATCH_UNITS,
        ),
    )
    normalize_advantage: bool = field(default=True, metadata=opt("normalise advantages (mean 0, std 1)"))
    advantage_scope: str = field(
        default="minibatch",
        metadata=opt(
            "what the advantages are normalised over: each minibatch, or the whole rollout once "
            "(better for small minibatches of sparse-reward episodes)",
            choices=ADVANTAGE_SCOPES,
        ),
    )

    def resolve(self) -> PPOConfig:
        cfg = super().resolve()
        if not 0 <= cfg.gae_lambda <= 1:
            raise ValueError(f"gae_lambda must be in [0, 1], got {cfg.gae_lambda!r}")
        if not (math.isfinite(cfg.clip_range) and cfg.clip_range > 0):
            raise ValueError(f"clip_range must be a finite number > 0, got {cfg.clip_range!r}")
        if cfg.value_clip is not None and not (math.isfinite(cfg.value_clip) and cfg.value_clip > 0):
            raise ValueError(f"value_clip must be a finite number > 0 or None, got {cfg.value_clip!r}")
        require_int("n_epochs", cfg.n_epochs)
        if cfg.advantage_scope not in ADVANTAGE_SCOPES:
            raise ValueError(
                f"advantage_scope must be one of {', '.join(ADVANTAGE_SCOPES)}, got {cfg.advantage_scope!r}"
            )
        if cfg.minibatch_unit not in MINIBATCH_UNITS:
            raise ValueError(
                f"minibatch_unit must be one of {', '.join(MINIBATCH_UNITS)}, got {cfg.minibatch_unit!r}"
            )
        # with steps the upper bound is B * T, checked by the trainer (T is the env's)
        most = cfg.batch_size if cfg.minibatch_unit == "episodes" else None
        if (
            isinstance(cfg.n_minibatches, bool)
            or not isinstance(cfg.n_minibatches, int)
            or cfg.n_minibatches < 1
            or (most is not None and cfg.n_minibatches > most)
        ):
            allowed = f"from 1 to batch_size ({most})" if most is not None else ">= 1"
            raise ValueError(f"n_minibatches must be an integer {allowed}, got {cfg.n_minibatches!r}")
        return cfg


def gae(rewards: Tensor, values: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """GAE(lambda) advantages and returns of whole episodes; V = 0 after the last step.

    Args:
        rewards, values: (B, T).
    Returns:
        advantages (B, T) and returns = advantages + values (B, T).
    """
    # in numpy for speed, with torch's float ops bit for bit (see a2c.discounted_returns)
    r, v = rewards.detach().cpu().numpy(), values.detach().cpu().numpy()
    B, T = r.shape
    adv = np.empty_like(r)
    g, gl = r.dtype.type(gamma), r.dtype.type(gamma * lam)
    running = np.zeros(B, dtype=r.dtype)
    next_value = np.zeros(B, dtype=r.dtype)
    for t in range(T - 1, -1, -1):
        delta = r[:, t] + g * next_value - v[:, t]
        running = delta + gl * running
        adv[:, t] = running
        next_value = v[:, t]
    advantages = torch.from_numpy(adv).to(rewards.device)
    return advantages, advantages + values


def normalized(x: Tensor) -> Tensor:
    """``x`` shifted and scaled to mean 0 and (unbiased) std 1; only shifted if it has one element."""
    return (x - x.mean()) / (x.std(unbiased=True) + 1e-8) if x.numel() > 1 else x - x.mean()


class PPOLossTerms(NamedTuple):
    """The PPO loss, its parts (scaled by their coefficients) and two diagnostics."""

    total: Tensor
    policy: Tensor
    value: Tensor
    entropy: Tensor
    clip_fraction: Tensor
    approx_kl: Tensor


def ppo_loss(
    logits: Tensor,
    values: Tensor,
    actions: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    returns: Tensor,
    old_values: Tensor,
    clip_range: float = 0.2,
    value_clip: float | None = None,
    value_coef: float = 0.5,
    entropy_coef: float = 0.01,
    entropy_mode: str = "entropy",
    normalize_advantage: bool = True,
) -> PPOLossTerms:
    """The clipped PPO loss, averaged over the minibatch's steps.

    Args:
        logits: (B, T, A). values: (B, T). actions: (B, T) int64.
        old_log_probs, advantages, returns, old_values: (B, T), from the acting parameters.
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    taken = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    adv = normalized(advantages) if normalize_advantage else advantages
    log_ratio = taken - old_log_probs
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_range, 1 + clip_range) * adv)
    policy = -surrogate.mean()
    error = (values - returns).pow(2)
    if value_clip is not None:
        clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
        error = torch.max(error, (clipped - returns).pow(2))
    value = value_coef * error.mean()
    entropy = entropy_term(log_probs, entropy_coef, entropy_mode)
    with torch.no_grad():
        clip_fraction = ((ratio - 1).abs() > clip_range).float().mean()
        approx_kl = ((ratio - 1) - log_ratio).mean()  # the low-variance estimator of KL(old || new)
    return PPOLossTerms(policy + value + entropy, policy, value, entropy, clip_fraction, approx_kl)


def _steps_of(x: Tensor, flat_idx: Tensor) -> Tensor:
    """The (episode, step) pairs ``flat_idx`` (K,) of x (B, T, ...) as one row: (1, K, ...)."""
    return x.flatten(0, 1)[flat_idx].unsqueeze(0)


class PlasticPPOTrainer(A2CTrainer):
    """A2CTrainer's env, policy, optimizer and generators, with PPO's ``learn``.

    ``state_dict`` adds the minibatch generator, so a resumed run continues bit for bit.
    """

    config: PPOConfig

    def __init__(self, config: PPOConfig, device: str | torch.device = "cpu") -> None:
        if not isinstance(config, PPOConfig):
            raise TypeError(f"PlasticPPOTrainer needs a PPOConfig, got {type(config).__name__}")
        super().__init__(config, device)
        steps = self.config.batch_size * cast(BatchedVectorEnv, self.envs.unwrapped).episode_length
        if self.config.minibatch_unit == "steps" and self.config.n_minibatches > steps:
            raise ValueError(
                f"n_minibatches must be at most batch_size * episode length ({steps}) with "
                f"minibatch_unit 'steps', got {self.config.n_minibatches}"
            )
        # its own stream, so the minibatch order does not shift the action draws
        self.minibatch_generator = torch.Generator().manual_seed(self.config.seed + 1_000_003)
        self.last_stats: dict[str, float] = {}

    @torch.no_grad()
    def score(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        """log pi_old(a_t) and V_old(t), (B, T) each, with the current (acting) parameters."""
        obs = rollout.obs.to(self.device)
        record = rollout.record
        if record is not None and self.config.unroll_impl != "reference" and record.matches(self.policy.core):
            hidden = record.x  # the activities acting computed: no second forward
            logits, values = self.policy.heads(hidden)
        else:
            out = self.policy.unroll(
                obs, self.policy.initial_state(obs.shape[0], self.device), impl=self.config.unroll_impl
            )
            logits, values = out.logits, out.values
        log_probs = torch.log_softmax(logits, -1).gather(-1, rollout.actions.to(self.device).unsqueeze(-1))
        return log_probs.squeeze(-1), values

    def learn(self, rollout: Rollout) -> dict[str, float]:
        """``n_epochs`` epochs of minibatch PPO steps over ``rollout``; returns mean metrics.

        Raises:
            NonFiniteLossError: NaN/Inf loss or gradient (that minibatch step is not applied).
        """
        cfg = self.config
        assert cfg.entropy_coef is not None and cfg.grad_clip is not None  # filled by resolve()
        self.policy.train()
        old_log_probs, old_values = self.score(rollout)
        rewards = rollout.rewards.to(self.device)
        advantages, returns = gae(rewards, old_values, cfg.gamma, cfg.gae_lambda)
        per_minibatch = cfg.normalize_advantage and cfg.advantage_scope == "minibatch"
        if cfg.normalize_advantage and not per_minibatch:
            advantages = normalized(advantages)
        obs, actions = rollout.obs.to(self.device), rollout.actions.to(self.device)
        B, T = actions.shape
        sums: dict[str, float] = {}
        n_steps = n_skipped = 0
        record = rollout.record if cfg.unroll_impl != "reference" else None
        by_steps = cfg.minibatch_unit == "steps"  # then every minibatch replays all B episodes
        everyone = torch.arange(B)
        batch = (actions, old_log_probs, advantages, returns, old_values)
        for _ in range(cfg.n_epochs):
            order = torch.randperm(B * T if by_steps else B, generator=self.minibatch_generator)
            for idx in torch.tensor_split(order, cfg.n_minibatches):
                episodes = everyone if by_steps else idx
                if record is not None and record.matches(self.policy.core):
                    out = self.policy.unroll_recorded(
                        obs[episodes], record if by_steps else record.select(idx)
                    )
                else:
                    out = self.policy.unroll(
                        obs[episodes],
                        self.policy.initial_state(len(episodes), self.device),
                        impl=cfg.unroll_impl,
                    )
                mods = out.modulators
                if by_steps:  # the loss on this minibatch's (episode, step) pairs only, as one (1, K) row
                    logits, values = _steps_of(out.logits, idx), _steps_of(out.values, idx)
                    act, old_lp, adv, ret, old_v = (_steps_of(x, idx) for x in batch)
                    mods = None if mods is None else _steps_of(mods, idx)
                else:
                    logits, values = out.logits, out.values
                    act, old_lp, adv, ret, old_v = (x[idx] for x in batch)
                terms = ppo_loss(
                    logits,
                    values,
                    act,
                    old_lp,
                    adv,
                    ret,
                    old_v,
                    cfg.clip_range,
                    cfg.value_clip,
                    cfg.value_coef,
                    cfg.entropy_coef,
                    cfg.entropy_mode,
                    per_minibatch,
                )
                terms = self.with_modulator_penalty(terms, mods)
                if not torch.isfinite(terms.total):
                    raise NonFiniteLossError(
                        f"loss is {terms.total.item()} at update {self.updates_done + 1}; not applied"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                terms.total.backward()
                grad_norm, skipped = self.clipped_step()
                n_skipped += skipped
                n_steps += 1
                for key, value in (
                    ("loss", terms.total),
                    ("policy_loss", terms.policy),
                    ("value_loss", terms.value),
                    ("entropy_term", terms.entropy),
                    ("grad_norm", grad_norm),
                    ("clip_fraction", terms.clip_fraction),
                    ("approx_kl", terms.approx_kl),
                ):
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
        self.updates_done += 1
        means = {k: v / n_steps for k, v in sums.items()}
        self.last_stats = {"clip_fraction": means.pop("clip_fraction"), "approx_kl": means.pop("approx_kl")}
        return {**self._metrics(rollout), **means, "skipped_steps": float(n_skipped)}

    def _metrics(self, rollout: Rollout) -> dict[str, Any]:
        syn = self.policy.core.synapses
        return {
            "update": self.updates_done,
            "reward_mean": rollout.rewards.sum(dim=1).mean().item(),
            "modulator_abs_mean": (
                rollout.modulators.abs().mean().item() if rollout.modulators is not None else math.nan
            ),
            "eta": syn.eta.item() if hasattr(syn, "eta") else math.nan,
            "eta_e": syn.eta_e.item() if hasattr(syn, "eta_e") else math.nan,
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "minibatch_rng": self.minibatch_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.minibatch_generator.set_state(state["minibatch_rng"])
