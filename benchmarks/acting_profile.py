"""Per-step cost of acting, split into its parts, before (act-then-replay) and now (fused actor).

For each configuration, B = 30 episodes are acted for one whole episode, and each part of a
step is timed on its own (wall and CPU time, medians over the steps):

* ``env``: ``envs.step`` of the native vector env (the same in both);
* ``previous``: ``policy.step(impl="fast")`` (a one-step call of the sequence kernel: traces
  copied into and out of its padded layout, threads spawned and joined) + softmax +
  ``torch.multinomial`` + the tensor/numpy conversions (for the rule ``none``:
  ``impl="reference"``, as before);
* ``fused``: ``Actor.step`` (input projection, recurrent step, trace update, policy head and
  sampling in one call, state kept padded between steps).

    python benchmarks/acting_profile.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from bpm_agents.a2c import A2CConfig, A2CTrainer  # noqa: E402

CONFIGS = {
    "cue-retroactive": ("bpm/CueReward-v0", "retroactive", 200),
    "cue-none": ("bpm/CueReward-v0", "none", 200),
    "maze-simple": ("bpm/PlasticMaze-v0", "simple", 100),
    "maze-none": ("bpm/PlasticMaze-v0", "none", 139),
}


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def profile(name: str) -> dict[str, tuple[float, float]]:
    env_id, rule, hidden = CONFIGS[name]
    trainer = A2CTrainer(A2CConfig(env_id=env_id, rule=rule, hidden_size=hidden, seed=0))
    policy, envs = trainer.policy, trainer.envs
    T = envs.unwrapped.episode_length
    obs, _ = envs.reset()
    B = obs.shape[0]
    gen = torch.Generator().manual_seed(0)
    uniforms = torch.rand(B, T, generator=gen, dtype=torch.float64)
    actor = policy.episode_actor(B, T, uniforms, impl="auto")
    state = policy.initial_state(B)
    impl = "fast" if rule != "none" else "reference"
    parts: dict[str, list[tuple[float, float]]] = {"env": [], "previous": [], "fused": []}

    def previous():
        nonlocal state
        with torch.no_grad():
            out = policy.step(torch.from_numpy(obs), state, impl=impl)
            state = out.state
            probs = torch.softmax(out.logits.float(), dim=-1)
            return torch.multinomial(probs, 1, generator=gen).squeeze(-1).numpy()

    for _ in range(T):
        _, w, c = _timed(previous)
        parts["previous"].append((w, c))
        actions, w, c = _timed(lambda: actor.step(obs))
        parts["fused"].append((w, c))
        (obs, *_), w, c = _timed(lambda: envs.step(actions))
        parts["env"].append((w, c))
    return {
        k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in parts.items()
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list from {', '.join(CONFIGS)}")
    p.add_argument("--threads", type=int, default=1, help="torch / kernel threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# threads={args.threads}; medians per acting step of B=30 (wall ms / CPU ms)")
    print(
        "| config | env step | previous network + sampling | fused Actor.step | previous step total | fused step total | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.configs.split(","):
        r = profile(name)
        env, prev, fused = (np.array(r[k]) * 1e3 for k in ("env", "previous", "fused"))
        print(
            f"| {name} | {env[0]:.3f} / {env[1]:.3f} | {prev[0]:.3f} / {prev[1]:.3f} "
            f"| {fused[0]:.3f} / {fused[1]:.3f} | {env[0] + prev[0]:.3f} | {env[0] + fused[0]:.3f} "
            f"| {(env[0] + prev[0]) / (env[0] + fused[0]):.1f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
