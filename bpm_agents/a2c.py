"""A2C as in the Backpropamine paper: lock-step episodes, Monte-Carlo returns, full-episode BPTT.

One update:

1. **Act.** ``batch_size`` episodes run in lock-step on the native vector env for the whole
   episode, without autograd (:func:`collect_rollout`), sampling actions from a seeded generator.
2. **Replay.** The recorded observations go through ``policy.unroll`` with autograd. The
   observations are constants of the episode, so this is exactly backpropagation through the
   episode, and ``unroll`` is the one place that is made fast.
3. **Learn.** ``R_t = sum_k gamma^k r_{t+k}`` (no bootstrapping), and the paper's loss, averaged
   over batch and time (:func:`a2c_loss`)::

       -log pi(a_t) * stopgrad(R_t - V_t) + value_coef * (R_t - V_t)^2 + entropy_coef * sum_a pi(a)^2

   (``entropy_mode="entropy"`` uses ``- entropy_coef * H(pi)`` instead). Adam, gradient-norm clip.

Unlike the release, each element uses its own value baseline and learning starts at update 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

import bpm_envs  # registers the bpm/ environments
from bpm_agents.checkpoint import DictConfig
from bpm_agents.config import opt
from bpm_agents.plasticity import MODULATOR_ACTIVATIONS, RULES, PlasticityConfig, modulator_saturation
from bpm_agents.policy import PlasticActorCritic, PolicyConfig
from bpm_envs.batched import BatchedVectorEnv

if TYPE_CHECKING:
    from typing_extensions import Self

ENTROPY_MODES = ("sum_squares", "entropy")
#: implementations of the recurrent step (``A2CConfig.unroll_impl``, flag ``--impl``)
UNROLL_IMPLS = ("auto", "reference", "fast", "chunked")

#: Per-task defaults from the paper (section 4); ``hidden_size`` may depend on the rule.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "bpm/CueReward-v0": dict(
        hidden_size={"none": 200, "hebbian": 200, "simple": 200, "retroactive": 200},
        lr=1e-4,
        adam_eps=1e-6,
        grad_clip=2.0,
        entropy_coef=0.1,
        eta_init=0.1,
        eta_e_init=0.1,
    ),
    "bpm/PlasticMaze-v0": dict(
        # the release matched parameter counts (~22.5k) by size: rnn 139, plastic 101, modulated 100
        hidden_size={"none": 139, "hebbian": 101, "simple": 100, "retroactive": 100},
        lr=1e-4,
        adam_eps=1e-4,
        grad_clip=4.0,
        entropy_coef=0.03,
        eta_init=0.01,
        eta_e_init=0.01,
    ),
}


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN or Inf; the update was not applied."""


@dataclass(frozen=True)
class A2CConfig(DictConfig):
    """Hyper-parameters of an A2C run. ``None`` fields take the task's default (see ``resolve``)."""

    env_id: str = field(
        default="bpm/CueReward-v0",
        metadata=opt(f"environment id: {', '.join(TASK_DEFAULTS)}", flag="env"),
    )
    rule: str = field(
        default="retroactive",
        metadata=opt("plasticity rule of the recurrent weights", flag="plasticity", choices=RULES),
    )
    env_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata=opt("JSON options for the environment, e.g. '{\"fixed_cues\": true}'"),
    )
    hidden_size: int | None = field(
        default=None,
        metadata=opt(
            "N recurrent units", default="per task and rule: cue 200; maze 100, none 139, hebbian 101"
        ),
    )
    batch_size: int = field(default=30, metadata=opt("B episodes per update, run in lock-step"))
    gamma: float = field(default=0.9, metadata=opt("discount"))
    lr: float | None = field(default=None, metadata=opt("Adam learning rate", default="1e-4"))
    adam_eps: float | None = field(
        default=None, metadata=opt("Adam epsilon", default="per task: cue 1e-6, maze 1e-4")
    )
    grad_clip: float | None = field(
        default=None, metadata=opt("gradient-norm clip", default="per task: cue 2.0, maze 4.0")
    )
    grad_skip: float | None = field(
        default=None,
        metadata=opt(
            "skip an optimizer step whose gradient norm before clipping is above this (or "
            "infinite): the exploding gradients of a chaotic recurrent regime, where the clipped "
            "direction is the exploding one",
            default="off",
        ),
    )
    weight_decay: float = field(
        default=0.0,
        metadata=opt(
            "decoupled (AdamW) weight decay of the weight matrices, against the recurrent weights' "
            "growth in long runs; biases and the plasticity rates are not decayed (0: plain Adam)"
        ),
    )
    modulator_penalty: float = field(
        default=0.0,
        metadata=opt(
            "coefficient of a loss term on the mean square of the modulator's pre-activation, "
            "which keeps M(t) out of saturation (modulated rules; no effect on the others)"
        ),
    )
    modulator_bound: float = field(
        default=0.0,
        metadata=opt(
            "the modulator penalty counts only the part of |pre-activation| above this bound "
            "(0: all of it; 1.47 leaves |M| < 0.9 alone)"
        ),
    )
    value_coef: float = field(default=0.1, metadata=opt("value loss coefficient"))
    entropy_coef: float | None = field(
        default=None,
        metadata=opt(
            "coefficient of the entropy term (sum_squares: a penalty on sum_a pi(a)^2; entropy: a bonus on H(pi))",
            default="per task: cue 0.1, maze 0.03",
        ),
    )
    entropy_mode: str = field(
        default="sum_squares",
        metadata=opt("'sum_squares' (the paper's penalty) or a true 'entropy' bonus", choices=ENTROPY_MODES),
    )
    trace_clip: float = field(
        default=1.0, metadata=opt("the Hebbian (and eligibility) traces are clipped to [-c, c]")
    )
    fanout: bool = field(default=False, metadata=opt("per-neuron modulation v_j*M+u_j (modulated rules)"))
    modulator_activation: str = field(
        default="tanh", metadata=opt("activation of M(t)", choices=MODULATOR_ACTIVATIONS)
    )
    eta_init: float | None = field(
        default=None, metadata=opt("initial Hebbian rate", default="per task: cue 0.1, maze 0.01")
    )
    eta_e_init: float | None = field(
        default=None, metadata=opt("initial eligibility rate", default="per task: cue 0.1, maze 0.01")
    )
    detach_value: bool = field(
        default=False,
        metadata=opt(
            "the value head reads the hidden state through a stop-gradient: the value loss trains "
            "the value head only, and the network learns from the policy loss alone"
        ),
    )
    seed: int = field(default=0, metadata=opt("seed of weights, environments and action sampling"))
    unroll_impl: str = field(
        default="auto",
        metadata=opt(
            "implementation of the recurrent step (acting and learning): 'auto' = the fused C++ "
            "kernel where it applies (else 'chunked' for learning), 'fast' = the kernel, "
            "'reference' = the plain rules op by op, 'chunked' = the plain rules in checkpointed "
            "16-step segments (any device)",
            flag="impl",
            aliases=["unroll"],
            choices=UNROLL_IMPLS,
        ),
    )

    def resolve(self) -> Self:
        """Fill the ``None`` fields from :data:`TASK_DEFAULTS` and validate everything."""
        if self.rule not in RULES:
            raise ValueError(f"unknown plasticity rule {self.rule!r}; allowed: {', '.join(RULES)}")
        bpm_envs.check_env_id(self.env_id, "plastic A2C trains on")
        defaults = TASK_DEFAULTS[self.env_id]
        filled = {}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                filled[name] = value[self.rule] if name == "hidden_size" else value
        cfg = replace(self, **filled)
        for name in ("hidden_size", "batch_size"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)!r}")
        if not 0 <= cfg.gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {cfg.gamma!r}")
        for name in ("lr", "adam_eps", "grad_clip"):
            if not 0 < getattr(cfg, name) <= torch.finfo(torch.float32).max:
                raise ValueError(
                    f"{name} must be a finite number > 0 (at most 3.4e38, the float32 range), "
                    f"got {getattr(cfg, name)!r}"
                )
        if cfg.grad_skip is not None and not 0 < cfg.grad_skip <= torch.finfo(torch.float32).max:
            raise ValueError(f"grad_skip must be a finite number > 0 or None, got {cfg.grad_skip!r}")
        if not 0 <= cfg.weight_decay <= torch.finfo(torch.float32).max:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {cfg.weight_decay!r}")
        for name in ("modulator_penalty", "modulator_bound"):
            if not 0 <= getattr(cfg, name) <= torch.finfo(torch.float32).max:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(cfg, name)!r}")
        if cfg.entropy_mode not in ENTROPY_MODES:
            raise ValueError(
                f"unknown entropy mode {cfg.entropy_mode!r}; allowed: {', '.join(ENTROPY_MODES)}"
            )
        if cfg.unroll_impl not in UNROLL_IMPLS:
            raise ValueError(f"unknown unroll impl {cfg.unroll_impl!r}; allowed: {', '.join(UNROLL_IMPLS)}")
        cfg.plasticity()  # validates the plasticity options
        return cfg

    def plasticity(self) -> PlasticityConfig:
        return PlasticityConfig(
            rule=self.rule,
            clip=self.trace_clip,
            fanout=self.fanout,
            modulator_activation=self.modulator_activation,
            eta_init=self.eta_init if self.eta_init is not None else 0.1,
            eta_e_init=self.eta_e_init if self.eta_e_init is not None else 0.1,
        )


class Rollout(NamedTuple):
    """B lock-step episodes: obs (B, T, D), actions (B, T), rewards (B, T), modulators (B, T) or None.

    ``record`` is what the fused acting kernel stored for the backward (an ``ActingRecord``), or
    ``None`` where acting ran op by op; learning reuses it while the parameters are unchanged.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    modulators: Tensor | None
    infos: list[dict[str, Any]]
    record: Any = None


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """Monte-Carlo returns ``R_t = r_t + gamma * R_{t+1}``, zero after the episode: (B, T) -> (B, T)."""
    # the recursion runs in numpy: an op on a (B,) array costs about 1 us there against torch's
    # 5-7 us, and the float ops (gamma in the rewards' dtype, then mul, add) are torch's, bit for bit
    r = rewards.detach().cpu().numpy()
    returns = np.empty_like(r)
    g = r.dtype.type(gamma)
    running = np.zeros(r.shape[0], dtype=r.dtype)
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + g * running
        returns[:, t] = running
    return torch.from_numpy(returns).to(rewards.device)


class LossTerms(NamedTuple):
    """The A2C loss and its parts (already scaled by their coefficients)."""

    total: Tensor
    policy: Tensor
    value: Tensor
    entropy: Tensor


def a2c_loss(
    logits: Tensor,
    values: Tensor,
    actions: Tensor,
    returns: Tensor,
    value_coef: float = 0.1,
    entropy_coef: float = 0.1,
    entropy_mode: str = "sum_squares",
) -> LossTerms:
    """The paper's A2C loss, averaged over batch and time.

    Args:
        logits: (B, T, A) policy logits.
        values: (B, T) value estimates.
        actions: (B, T) int64 actions taken.
        returns: (B, T) Monte-Carlo returns.
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    taken = log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    advantage = returns - values
    policy = -(taken * advantage.detach()).mean()
    value = value_coef * advantage.pow(2).mean()
    entropy = entropy_term(log_probs, entropy_coef, entropy_mode)
    return LossTerms(policy + value + entropy, policy, value, entropy)


def entropy_term(log_probs: Tensor, coef: float, mode: str) -> Tensor:
    """The action-distribution term of the loss (to be minimised), averaged over batch and time.

    ``sum_squares`` is the paper's penalty ``coef * sum_a pi(a)^2``; ``entropy`` is the usual
    bonus, ``-coef * H(pi)``. ``log_probs``: (..., A) log-softmax of the logits.
    """
    probs = log_probs.exp()
    if mode == "sum_squares":
        return coef * probs.pow(2).sum(-1).mean()
    if mode == "entropy":
        return coef * (probs * log_probs).sum(-1).mean()  # = -coef * H
    raise ValueError(f"unknown entropy mode {mode!r}; allowed: {', '.join(ENTROPY_MODES)}")


def make_vector_env(config: A2CConfig) -> gym.vector.VectorEnv:
    """The native batched twin of ``config.env_id`` with ``config.batch_size`` episodes."""
    try:
        return gym.make_vec(
            config.env_id,
            num_envs=config.batch_size,
            vectorization_mode="vector_entry_point",
            **config.env_kwargs,
        )
    except TypeError as exc:  # an option the env does not take: bad user input, not a bug
        raise ValueError(f"bad env options {config.env_kwargs!r} for {config.env_id}: {exc}") from None


def build_policy(config: A2CConfig, obs_size: int, n_actions: int) -> PlasticActorCritic:
    """The policy of a (resolved) config; weights drawn from a generator seeded by ``config.seed``."""
    assert config.hidden_size is not None, "build_policy needs a resolved config"
    policy_config = PolicyConfig(
        obs_size, n_actions, config.hidden_size, config.plasticity(), detach_value=config.detach_value
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(config.seed)
        return PlasticActorCritic(policy_config)


@torch.no_grad()
def collect_rollout(
    policy: PlasticActorCritic,
    envs: gym.vector.VectorEnv,
    generator: torch.Generator,
    keep_infos: bool = False,
    impl: str = "auto",
) -> Rollout:
    """Run one episode in every env of ``envs`` in lock-step through ``policy.episode_actor``.

    ``impl`` picks the actor: the fused kernel by default where it applies (it also records what
    the backward needs, see :attr:`Rollout.record`), ``reference`` for ``policy.step`` op by op.
    Both sample with the same uniforms, drawn at once for the whole rollout from ``generator``
    on the CPU (reproducible on any device).

    All episodes start together at ``envs.reset()`` and last the env's ``episode_length`` steps.
    """
    length = cast(BatchedVectorEnv, envs.unwrapped).episode_length
    obs, info = envs.reset()
    batch = obs.shape[0]
    uniforms = torch.rand(batch, length, generator=generator, dtype=torch.float64)
    actor = policy.episode_actor(batch, length, uniforms, impl=impl)
    obs_seq = np.empty((batch, length, obs.shape[1]), dtype=np.float32)
    act_seq = np.empty((batch, length), dtype=np.int64)
    rew_seq = np.empty((batch, length), dtype=np.float32)
    infos = [info] if keep_infos else []
    # the native vector env, unwrapped, steps without the infos nobody reads here
    lockstep = isinstance(envs, BatchedVectorEnv) and not keep_infos
    for t in range(length):
        obs_seq[:, t] = obs
        actions = actor.step(obs)
        if lockstep:
            obs, rewards = cast(BatchedVectorEnv, envs).step_lockstep(actions)
        else:
            obs, rewards, _, _, info = envs.step(actions)
        act_seq[:, t] = actions
        rew_seq[:, t] = rewards
        if keep_infos:
            infos.append(info)
    mods = actor.modulators
    return Rollout(
        torch.from_numpy(obs_seq),
        torch.from_numpy(act_seq),
        torch.from_numpy(rew_seq),
        None if mods is None else mods.clone(),
        infos,
        actor.record(),
    )


def make_optimizer(policy: torch.nn.Module, config: A2CConfig) -> torch.optim.Optimizer:
    """Adam over every parameter; with ``weight_decay`` > 0, AdamW decaying the matrices only.

    Biases, the plasticity rates (eta) and other vectors keep no decay (the usual split, as in
    nanoGPT). At ``weight_decay`` 0 this is plain Adam with one parameter group, as before the
    option existed, so older checkpoints resume bit for bit.
    """
    assert config.lr is not None and config.adam_eps is not None  # filled by resolve()
    if config.weight_decay == 0:
        return torch.optim.Adam(policy.parameters(), lr=config.lr, eps=config.adam_eps)
    params = list(policy.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, eps=config.adam_eps)


class A2CTrainer:
    """Holds the env, the policy, the optimizer and every generator of one A2C run.

    One update acts once and learns once: the fused acting kernel records the forward, and
    ``learn`` runs only its backward (``unroll_impl="reference"`` replays op by op instead).

    ``update()`` performs one update; ``state_dict()`` / ``load_state_dict()`` capture all of it
    (weights, optimizer, action generator, env generators, update count) so a resumed run
    continues bit for bit.
    """

    def __init__(self, config: A2CConfig, device: str | torch.device = "cpu") -> None:
        self.config = config.resolve()
        self.device = torch.device(device)
        self.envs = make_vector_env(self.config)
        self.envs.reset(seed=self.config.seed)
        # the bpm tasks: a flat Box of observations, Discrete actions
        obs_size = cast(tuple[int, ...], self.envs.single_observation_space.shape)[0]
        n_actions = int(cast(gym.spaces.Discrete, self.envs.single_action_space).n)
        self.policy = build_policy(self.config, obs_size, n_actions).to(self.device)
        self.optimizer = make_optimizer(self.policy, self.config)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.updates_done = 0

    def compute_loss(self, rollout: Rollout) -> tuple[LossTerms, Any]:
        """The loss terms of ``rollout`` with autograd: from the acting record where it is valid
        (only the backward runs), else by replaying the episodes (``unroll``)."""
        obs = rollout.obs.to(self.device)
        record = rollout.record
        if record is not None and self.config.unroll_impl != "reference" and record.matches(self.policy.core):
            out = self.policy.unroll_recorded(obs, record)
        else:
            state = self.policy.initial_state(obs.shape[0], self.device)
            out = self.policy.unroll(obs, state, impl=self.config.unroll_impl)
        returns = discounted_returns(rollout.rewards.to(self.device), self.config.gamma)
        assert self.config.entropy_coef is not None  # filled by resolve()
        terms = a2c_loss(
            out.logits,
            out.values,
            rollout.actions.to(self.device),
            returns,
            self.config.value_coef,
            self.config.entropy_coef,
            self.config.entropy_mode,
        )
        return self.with_modulator_penalty(terms, out.modulators), out

    def with_modulator_penalty(self, terms: Any, modulators: Tensor | None) -> Any:
        """``terms`` (a loss NamedTuple) with ``modulator_penalty * modulator_saturation`` of
        ``modulators`` added to its total; unchanged at coefficient 0 or without a modulator."""
        cfg = self.config
        if cfg.modulator_penalty == 0 or modulators is None:
            return terms
        penalty = modulator_saturation(modulators, cfg.modulator_activation, cfg.modulator_bound)
        return terms._replace(total=terms.total + cfg.modulator_penalty * penalty)

    def update(self) -> dict[str, float]:
        """Collect B episodes, replay them, take one optimizer step; return the metrics.

        Raises:
            NonFiniteLossError: NaN/Inf loss or gradient (parameters are left unchanged).
        """
        return self.learn(self.collect())

    def collect(self) -> Rollout:
        """Act: one episode in each of the B envs, without autograd (the first half of ``update``)."""
        self.policy.train()
        return collect_rollout(self.policy, self.envs, self.generator, impl=self.config.unroll_impl)

    def learn(self, rollout: Rollout) -> dict[str, float]:
        """Replay ``rollout`` with autograd and take one optimizer step (the second half of ``update``).

        Raises:
            NonFiniteLossError: NaN/Inf loss or gradient (parameters are left unchanged).
        """
        self.policy.train()
        terms, out = self.compute_loss(rollout)
        if not torch.isfinite(terms.total):
            raise NonFiniteLossError(
                f"loss is {terms.total.item()} at update {self.updates_done + 1}; not applied"
            )
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        grad_norm, skipped = self.clipped_step()
        self.updates_done += 1
        syn = self.policy.core.synapses
        episode_rewards = rollout.rewards.sum(dim=1)
        return {
            "update": self.updates_done,
            "reward_mean": episode_rewards.mean().item(),
            "loss": terms.total.item(),
            "policy_loss": terms.policy.item(),
            "value_loss": terms.value.item(),
            "entropy_term": terms.entropy.item(),
            "grad_norm": grad_norm.item(),
            "skipped_steps": float(skipped),
            "modulator_abs_mean": (
                rollout.modulators.abs().mean().item() if rollout.modulators is not None else math.nan
            ),
            "eta": syn.eta.item() if hasattr(syn, "eta") else math.nan,
            "eta_e": syn.eta_e.item() if hasattr(syn, "eta_e") else math.nan,
        }

    def clipped_step(self) -> tuple[Tensor, bool]:
        """Clip the gradients' norm to ``grad_clip`` and take the optimizer step, unless the norm
        before clipping is above ``grad_skip`` (or infinite, with ``grad_skip`` set): then the
        gradients are dropped and the step skipped. Returns (norm before clipping, skipped).

        Raises:
            NonFiniteLossError: a NaN norm, or an infinite one without ``grad_skip`` (not applied).
        """
        config = self.config
        assert config.grad_clip is not None  # filled by resolve()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), config.grad_clip)
        if config.grad_skip is not None and grad_norm > config.grad_skip:  # False for NaN
            self.optimizer.zero_grad(set_to_none=True)
            return grad_norm, True
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"gradient norm is {grad_norm.item()} at update {self.updates_done + 1}; not applied"
            )
        self.optimizer.step()
        return grad_norm, False

    def state_dict(self) -> dict[str, Any]:
        return {
            "updates_done": self.updates_done,
            "model": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "action_rng": self.generator.get_state(),
            "env_rng": cast(BatchedVectorEnv, self.envs.unwrapped).get_rng_states(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["action_rng"])
        cast(BatchedVectorEnv, self.envs.unwrapped).set_rng_states(state["env_rng"])
        self.updates_done = int(state["updates_done"])
