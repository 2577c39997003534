"""Issue 29's diagnostic runs: which part of plastic PPO keeps the maze at random?

Short screening runs on ``bpm/PlasticMaze-v0`` (10 episodes per update, 10 epochs, 10 minibatches
per epoch, rollout-scope advantage normalisation, the PPO defaults otherwise), printing every 5
updates the env steps and the mean episode reward of the last 10 updates. Results and their reading
are in ``benchmarks/results/ppo_tuning/NOTES.txt``. Networks (``--net``):

* ``plastic``: our plastic actor-critic with ``--rule``; ``--w-zero`` starts w at 0, ``--orth``
  uses orthogonal init (policy head gain 0.01), ``--detach-value`` puts the value head on the
  detached hidden state.
* ``ff``: the same network with rule ``none`` and w frozen at 0, i.e. x_t = tanh(W_in u_t + b).
* ``mlp``: Stable-Baselines3's default architecture (separate 64x64 tanh actor and critic,
  orthogonal init), acting op by op, learning with our ``gae`` and ``ppo_loss``.

Minibatches (``--minibatch``): ``episodes`` (whole episodes, ``--per-minibatch`` of them; for
``plastic``/``ff`` the shipped ``PlasticPPOTrainer.learn`` unless ``--loop custom``) or ``steps`` (random (episode, step)
pairs; ``plastic`` then replays every episode for each minibatch and takes the loss on its steps
only, keeping whole-episode backpropagation at 10x the learning compute).

    python benchmarks/ppo_diagnostics.py --net ff --updates 75 --seed 100
    python benchmarks/ppo_diagnostics.py --net mlp --minibatch steps --updates 75 --seed 101
    python benchmarks/ppo_diagnostics.py --net plastic --rule simple --minibatch steps --updates 75
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

from bpm_agents.ppo import PlasticPPOTrainer, PPOConfig, gae, normalized, ppo_loss

EPISODE_STEPS = 200


def sb3_mlp(obs_size: int, out: int, gain: float) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(obs_size, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, out))
    for i, layer in enumerate([net[0], net[2], net[4]]):
        nn.init.orthogonal_(layer.weight, 2**0.5 if i < 2 else gain)
        nn.init.zeros_(layer.bias)
    return net


class DetachedInput(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, h: Tensor) -> Tensor:
        return self.layer(h.detach())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", choices=["plastic", "ff", "mlp"], default="plastic")
    p.add_argument("--rule", default="simple", help="plasticity rule of --net plastic")
    p.add_argument("--minibatch", choices=["episodes", "steps"], default="episodes")
    p.add_argument("--per-minibatch", type=int, default=1, help="episodes per minibatch (episodes)")
    p.add_argument("--batch-size", type=int, default=10, help="episodes per update")
    p.add_argument("--updates", type=int, default=75, help="updates of 10 episodes' worth of steps")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument(
        "--loop",
        choices=["shipped", "custom"],
        default="shipped",
        help="episodes minibatches of plastic/ff: PlasticPPOTrainer.learn, or this script's loop "
        "(the same loss, its own shuffle generator)",
    )
    p.add_argument("--w-zero", action="store_true")
    p.add_argument("--orth", action="store_true")
    p.add_argument("--detach-value", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    B, seed = args.batch_size, args.seed
    ff = args.net == "ff"
    cfg = PPOConfig(
        env_id="bpm/PlasticMaze-v0",
        rule="none" if args.net != "plastic" else args.rule,
        hidden_size=100,
        batch_size=B,
        n_epochs=10,
        n_minibatches=B // args.per_minibatch,
        advantage_scope="rollout",
        seed=seed,
    ).resolve()
    trainer = PlasticPPOTrainer(cfg)
    pol = trainer.policy
    with torch.no_grad():
        if ff or args.w_zero:
            pol.core.w.zero_()
        if args.orth:
            init = torch.Generator().manual_seed(seed)
            for layer, gain in ((pol.core.input, 2**0.5), (pol.policy_head, 0.01), (pol.value_head, 1.0)):
                nn.init.orthogonal_(layer.weight, gain, generator=init)
                layer.bias.zero_()
    if ff:
        pol.core.w.requires_grad_(False)
    if args.detach_value:
        pol.value_head = DetachedInput(pol.value_head)  # type: ignore[assignment]
    params = [q for q in pol.parameters() if q.requires_grad]
    if args.net == "mlp":
        torch.manual_seed(seed)
        pi, vf = sb3_mlp(15, 4, 0.01), sb3_mlp(15, 1, 1.0)
        params = [*pi.parameters(), *vf.parameters()]
        trainer.optimizer = torch.optim.Adam(params, lr=cfg.lr or 3e-4, eps=cfg.adam_eps or 1e-5)

    def heads(obs: Tensor) -> tuple[Tensor, Tensor]:  # feed-forward nets: (..., D) -> logits, V
        if args.net == "mlp":
            return pi(obs), vf(obs).squeeze(-1)
        h = torch.tanh(pol.core.input(obs))
        return pol.policy_head(h), pol.value_head(h).squeeze(-1)

    def mlp_rollout(u: int) -> tuple[Tensor, Tensor, Tensor]:
        o, _ = trainer.envs.reset(seed=seed * 1000 + u)
        obs, acts, rews = [], [], []
        for _ in range(EPISODE_STEPS):
            ot = torch.as_tensor(o, dtype=torch.float32)
            with torch.no_grad():
                a = torch.distributions.Categorical(logits=pi(ot)).sample()
            o, r, *_ = trainer.envs.step(a.numpy())
            obs.append(ot)
            acts.append(a)
            rews.append(torch.as_tensor(r, dtype=torch.float32))
        return torch.stack(obs, 1), torch.stack(acts, 1), torch.stack(rews, 1)

    g = torch.Generator().manual_seed(seed)
    rewards: list[float] = []
    t0 = time.time()
    for u in range(args.updates * 10 // B):
        if args.net != "mlp" and args.minibatch == "episodes" and args.loop == "shipped":
            rewards.append(trainer.learn(trainer.collect())["reward_mean"])
        else:
            if args.net == "mlp":
                obs, act, rew = mlp_rollout(u)
                with torch.no_grad():
                    logits, v = heads(obs)
                    olp = torch.log_softmax(logits, -1).gather(-1, act.unsqueeze(-1)).squeeze(-1)
            else:
                ro = trainer.collect()
                obs, act, rew = ro.obs, ro.actions, ro.rewards
                olp, v = trainer.score(ro)
            adv, ret = gae(rew, v, cfg.gamma, cfg.gae_lambda)
            adv = normalized(adv)
            T = rew.shape[1]
            for _ in range(cfg.n_epochs):
                if args.minibatch == "episodes":
                    groups = torch.randperm(B, generator=g).split(args.per_minibatch)
                    idxs = [(torch.arange(T)[None] + T * es[:, None]).reshape(-1) for es in groups]
                else:
                    idxs = list(torch.randperm(B * T, generator=g).chunk(10))
                for idx in idxs:
                    if args.net == "plastic":
                        out = pol.unroll(obs, pol.initial_state(B))
                        logits, values = out.logits, out.values
                    else:
                        logits, values = heads(obs)

                    def pick(x: Tensor, idx: Tensor = idx) -> Tensor:
                        return x.reshape(B * T, *x.shape[2:])[idx][None]

                    terms = ppo_loss(
                        pick(logits), pick(values), pick(act), pick(olp), pick(adv), pick(ret), pick(v),
                        normalize_advantage=False,
                    )  # fmt: skip
                    trainer.optimizer.zero_grad()
                    terms.total.backward()
                    torch.nn.utils.clip_grad_norm_(params, 0.5)
                    trainer.optimizer.step()
            rewards.append(rew.sum(1).mean().item())
        if (u + 1) % 5 == 0:
            last = rewards[-10:]
            print(
                f"update {u + 1} env_steps {(u + 1) * B * EPISODE_STEPS} reward_last10 "
                f"{sum(last) / len(last):.2f} wall_s {time.time() - t0:.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
