"""Seconds per whole A2C training step (act B episodes, then learn), ours against the previous
implementation and the paper's release, at 1 and 2 threads, and two one-thread runs at once.

A *step* is what ``train.py`` does per update: ``A2CTrainer.collect`` (acting B = 30 episodes in
lock-step: env stepping, the network, sampling) then ``A2CTrainer.learn`` (loss, backward,
gradient clip, Adam). Both halves are timed apart and summed.

Implementations, each in a fresh subprocess (so peak RSS, ``ru_maxrss``, is that run's alone):

* ``ours``: act once through the fused acting kernel (it records what the backward needs), learn
  once (backward only) - ``A2CTrainer.update`` as ``train.py`` runs it;
* ``previous``: the implementation before it, act-then-replay: each acting step is a one-step
  call of the sequence kernel (traces copied in and out, threads spawned per call, torch ops for
  the heads and ``torch.multinomial``), then the whole episode is replayed with autograd (for the
  rule ``none``: the plain torch reference for both, as before);
* ``reference``: acting and learning op by op with the rules of ``plasticity.py``.

Release figures: measured side by side on 2026-12-01 (issue 12) and ``shared/docs/paper.md`` §7.
Targets: issue 28 (2 threads, 1 thread; peak RSS <= 0.5 GB; a run beside another one-thread run
within 1.15x of the same run alone - the sweep case); rows it does not name have none.

    python benchmarks/train_throughput.py                            # all rows, 1 and 2 threads
    python benchmarks/train_throughput.py --rows cue-retroactive --threads 2 --updates 10
    python benchmarks/train_throughput.py --impls ours --omp-wait-policies passive --pairs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name: (env id, rule, N, release s/update (issue 12, 2026-12-01; else paper.md §7),
#        target s per thread count (issue 28))
ROWS = {
    "cue-retroactive": ("bpm/CueReward-v0", "retroactive", 200, 1.68, {2: 0.09, 1: 0.14}),
    "cue-simple": ("bpm/CueReward-v0", "simple", 200, 1.56, {2: 0.06, 1: 0.09}),
    "cue-none": ("bpm/CueReward-v0", "none", 200, 0.130, {}),
    "maze-simple": ("bpm/PlasticMaze-v0", "simple", 100, 0.80, {2: 0.035, 1: 0.05}),
    "maze-retroactive": ("bpm/PlasticMaze-v0", "retroactive", 100, 0.96, {}),
    "maze-none": ("bpm/PlasticMaze-v0", "none", 139, 0.26, {2: 0.02, 1: 0.03}),
}
MAX_RSS_GB = 0.5
MAX_PAIR_SLOWDOWN = 1.15
IMPLS = ("ours", "previous", "reference")


def _previous_collect(trainer):
    """Acting as it was before the fused actor: ``policy.step`` per step, multinomial sampling."""
    import numpy as np
    import torch

    from bpm_agents.a2c import Rollout

    policy, envs = trainer.policy, trainer.envs
    impl = "fast" if trainer.config.rule != "none" else "reference"
    length = envs.unwrapped.episode_length
    obs, _ = envs.reset()
    batch = obs.shape[0]
    state = policy.initial_state(batch)
    obs_seq = np.empty((batch, length, obs.shape[1]), dtype=np.float32)
    act_seq = np.empty((batch, length), dtype=np.int64)
    rew_seq = np.empty((batch, length), dtype=np.float32)
    with torch.no_grad():
        for t in range(length):
            obs_seq[:, t] = obs
            out = policy.step(torch.from_numpy(obs), state, impl=impl)
            state = out.state
            probs = torch.softmax(out.logits.float(), dim=-1)
            actions = torch.multinomial(probs, 1, generator=trainer.generator).squeeze(-1).numpy()
            obs, rewards, _, _, _ = envs.step(actions)
            act_seq[:, t] = actions
            rew_seq[:, t] = rewards
    return Rollout(torch.from_numpy(obs_seq), torch.from_numpy(act_seq), torch.from_numpy(rew_seq), None, [])


def worker(row: str, impl: str, updates: int, warmup: int, threads: int) -> dict:
    """Time ``updates`` whole steps (after ``warmup``) of one configuration in this process."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, ROOT)
    from bpm_agents.a2c import A2CConfig, A2CTrainer

    env_id, rule, hidden, *_ = ROWS[row]
    unroll = {
        "ours": "auto",
        "previous": "fast" if rule != "none" else "reference",
        "reference": "reference",
    }[impl]
    trainer = A2CTrainer(
        A2CConfig(env_id=env_id, rule=rule, hidden_size=hidden, batch_size=30, seed=0, unroll_impl=unroll)
    )
    act, learn = [], []
    for i in range(warmup + updates):
        t0 = time.perf_counter()
        rollout = _previous_collect(trainer) if impl == "previous" else trainer.collect()
        t1 = time.perf_counter()
        trainer.learn(rollout)
        t2 = time.perf_counter()
        del rollout  # as in trainer.update() (what train.py runs): no rollout outlives its update
        if i >= warmup:
            act.append(t1 - t0)
            learn.append(t2 - t1)
    return {
        "row": row,
        "impl": impl,
        "threads": threads,
        "act_s": act,
        "learn_s": learn,
        "step_s": [a + b for a, b in zip(act, learn)],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }


def _run_subprocess(row, impl, threads, policy, args) -> dict:
    return _finish(_start_subprocess(row, impl, threads, policy, args), row, impl)


def _start_subprocess(row, impl, threads, policy, args) -> subprocess.Popen:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        row,
        impl,
        "--updates",
        str(args.updates),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(threads),
    ]
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy.upper()  # read by libgomp when torch loads
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)


def _finish(proc: subprocess.Popen, row: str, impl: str) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {row}/{impl} failed:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list from: {', '.join(ROWS)}")
    parser.add_argument("--impls", default="ours,previous", help=f"comma list from: {', '.join(IMPLS)}")
    parser.add_argument("--threads", default="1,2", help="comma list of torch thread counts")
    parser.add_argument(
        "--omp-wait-policies",
        default="default,passive",
        help="comma list of OMP_WAIT_POLICY settings for 'ours' (default = unset); "
        "'previous' and 'reference' run under the first one",
    )
    parser.add_argument("--updates", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument(
        "--pairs",
        action="store_true",
        help="also run two one-thread 'ours' runs of each row at once (the sweep case) and compare "
        "each with the one-thread run alone",
    )
    parser.add_argument("--json", help="write all measurements to this file")
    parser.add_argument("--worker", nargs=2, metavar=("ROW", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.updates, args.warmup, int(args.threads))))
        return 0
    rows = [r for r in args.rows.split(",") if r]
    impls = [i for i in args.impls.split(",") if i]
    threads = [int(t) for t in args.threads.split(",") if t]
    policies = [p for p in args.omp_wait_policies.split(",") if p]
    bad = (
        [r for r in rows if r not in ROWS]
        + [i for i in impls if i not in IMPLS]
        + [p for p in policies if p not in ("default", "passive", "active")]
    )
    if bad or args.updates < 1 or args.warmup < 0 or not threads or min(threads) < 1:
        parser.error(f"bad arguments: {bad or 'updates/warmup/threads'}")
    if args.pairs and ("ours" not in impls or 1 not in threads):
        parser.error(
            "--pairs compares with the one-thread 'ours' run: keep 'ours' in --impls and 1 in --threads"
        )

    med = statistics.median
    print(f"# updates={args.updates} warmup={args.warmup}, B=30; medians over the timed steps", flush=True)
    results = []
    for row in rows:
        for th in threads:
            for impl in impls:
                for pol in policies if impl == "ours" else policies[:1]:
                    res = _run_subprocess(row, impl, th, pol, args)
                    res["policy"] = pol
                    results.append(res)
                    print(
                        f"# {row:17s} {impl:9s} threads={th} omp={pol:8s} step {med(res['step_s']):.3f} s "
                        f"(act {med(res['act_s']):.3f}, learn {med(res['learn_s']):.3f}), "
                        f"peak RSS {res['peak_rss_gb']:.2f} GB",
                        flush=True,
                    )
        if args.pairs:  # the sweep case: two one-thread runs side by side, both timed
            procs = [_start_subprocess(row, "ours", 1, policies[0], args) for _ in range(2)]
            for res in [_finish(p, row, "ours") for p in procs]:
                res.update(policy=policies[0], impl="ours-pair")
                results.append(res)
                print(f"# {row:17s} ours, one of two at once: step {med(res['step_s']):.3f} s", flush=True)
    print()
    print(
        "| config | threads | impl | OMP_WAIT_POLICY | step s | act s | learn s | peak RSS GB "
        "| x previous | x release | target s | met (and RSS <= 0.5 GB) |"
    )
    print("|---" * 12 + "|")
    prev = {(r["row"], r["threads"]): med(r["step_s"]) for r in results if r["impl"] == "previous"}
    for res in results:
        if res["impl"] == "ours-pair":
            continue
        _, _, _, release, targets = ROWS[res["row"]]
        target = targets.get(res["threads"])
        step = med(res["step_s"])
        p = prev.get((res["row"], res["threads"]))
        met = (
            "n/a"
            if res["impl"] != "ours" or target is None
            else ("yes" if step <= target and res["peak_rss_gb"] <= MAX_RSS_GB else "no")
        )
        print(
            f"| {res['row']} | {res['threads']} | {res['impl']} | {res['policy']} | {step:.3f} "
            f"| {med(res['act_s']):.3f} | {med(res['learn_s']):.3f} | {res['peak_rss_gb']:.2f} "
            f"| {'n/a' if p is None else f'{p / step:.1f}'} | {release / step:.1f} "
            f"| {'-' if target is None else f'{target:.3f}'} | {met} |"
        )
    pairs = [r for r in results if r["impl"] == "ours-pair"]
    if pairs:
        alone = {
            r["row"]: med(r["step_s"])
            for r in results
            if r["impl"] == "ours" and r["threads"] == 1 and r["policy"] == policies[0]
        }
        print()
        print(f"| config | one thread alone s | each of two at once s | ratio | <= {MAX_PAIR_SLOWDOWN} |")
        print("|---" * 5 + "|")
        for row in dict.fromkeys(r["row"] for r in pairs):
            each = [med(r["step_s"]) for r in pairs if r["row"] == row]
            worst = max(each) / alone[row]
            print(
                f"| {row} | {alone[row]:.3f} | {' / '.join(f'{e:.3f}' for e in each)} | {worst:.2f} "
                f"| {'yes' if worst <= MAX_PAIR_SLOWDOWN else 'no'} |"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
