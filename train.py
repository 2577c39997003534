#!/usr/bin/env python
"""Train a plastic recurrent agent with A2C on a bpm/ environment.

Examples:
    python train.py --env bpm/CueReward-v0 --plasticity retroactive --updates 5000 --seed 0 --out runs/cue-retro
    python train.py --out runs/cue-retro --updates 8000 --resume
    python train.py --algo plastic-ppo --env bpm/PlasticMaze-v0 --plasticity simple --updates 300 --out runs/maze-ppo
    python train.py --algo recurrent-ppo --env bpm/CueReward-v0 --updates 200 --out runs/cue-rppo
    python train.py lm --help          # Penn Treebank language models (see README)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Idle OpenMP threads of torch spin by default; on a CPU shared with other jobs that costs up to
# 40x on these small models. Must be set before torch loads (users may still override it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    from bpm_agents.a2c import ENTROPY_MODES, TASK_DEFAULTS
    from bpm_agents.plasticity import MODULATOR_ACTIVATIONS, RULES

    p = argparse.ArgumentParser(
        prog="train.py",
        description=(
            "Meta-train a recurrent actor-critic with differentiable (neuromodulated) plasticity "
            "by A2C on a bpm/ Gymnasium environment. Writes config.json, checkpoint.pt, "
            "progress.csv and TensorBoard logs to --out. Use 'train.py lm ...' for the Penn "
            "Treebank language models."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--algo",
        default="plastic-a2c",
        choices=["plastic-a2c", "plastic-ppo", "a2c", "ppo", "recurrent-ppo"],
        help="our plastic A2C (the paper's) or plastic PPO (whole-episode minibatches), or a Stable-Baselines3 / sb3-contrib peer ('train.py --algo ppo --help' lists the peers' flags); --resume reads it from the run folder",
    )
    p.add_argument("--env", default="bpm/CueReward-v0", help=f"environment id: {', '.join(TASK_DEFAULTS)}")
    p.add_argument(
        "--plasticity", default="retroactive", choices=RULES, help="plasticity rule of the recurrent weights"
    )
    p.add_argument(
        "--updates",
        type=int,
        default=1000,
        help="total number of updates of the run (one update = --batch-size episodes)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of weights, environments and action sampling")
    p.add_argument("--out", required=True, help="run folder (created; must be new unless --resume)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint, bit for bit. The saved config is kept: only --updates, --device, --checkpoint-every, --threads and the logging flags apply; a model, A2C or PPO flag whose value differs from the saved one is refused (exit 2), one with the same value is accepted. With --updates at or below the updates done, nothing is trained (exit 0)",
    )
    p.add_argument(
        "--device", default="auto", choices=["cpu", "cuda", "auto"], help="'auto' = cuda if available"
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        help="save a checkpoint every K updates (and at the end, and on Ctrl-C or SIGTERM, which stop after the current update and exit 130)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is fastest when several runs share the machine)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    g = p.add_argument_group("model and A2C (default: the paper's per-task values)")
    g.add_argument(
        "--hidden-size",
        type=int,
        default=None,
        help="N recurrent units (cue 200; maze 100, rnn 139, hebbian 101)",
    )
    g.add_argument("--batch-size", type=int, default=30, help="B episodes per update, run in lock-step")
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate (A2C 1e-4; PPO 3e-4)")
    g.add_argument(
        "--adam-eps", type=float, default=None, help="Adam epsilon (A2C: cue 1e-6, maze 1e-4; PPO 1e-5)"
    )
    g.add_argument(
        "--grad-clip", type=float, default=None, help="gradient-norm clip (A2C: cue 2.0, maze 4.0; PPO 0.5)"
    )
    g.add_argument("--gamma", type=float, default=None, help="discount (A2C 0.9, the paper's; PPO 0.99)")
    g.add_argument("--value-coef", type=float, default=None, help="value loss coefficient (A2C 0.1; PPO 0.5)")
    g.add_argument(
        "--entropy-coef",
        type=float,
        default=None,
        help="coefficient of the entropy term (A2C: sum-of-squares penalty, cue 0.1, maze 0.03; PPO: entropy bonus 0.01)",
    )
    g.add_argument(
        "--entropy-mode",
        default=None,
        choices=ENTROPY_MODES,
        help="'sum_squares' (paper, A2C default) or true 'entropy' bonus (PPO default)",
    )
    g.add_argument("--trace-clip", type=float, default=1.0, help="Hebbian traces are clipped to [-c, c]")
    g.add_argument("--fanout", action="store_true", help="per-neuron modulation v_j*M+u_j (modulated rules)")
    g.add_argument(
        "--modulator-activation", default="tanh", choices=MODULATOR_ACTIVATIONS, help="activation of M(t)"
    )
    g.add_argument("--eta-init", type=float, default=None, help="initial Hebbian rate (cue 0.1, maze 0.01)")
    g.add_argument(
        "--eta-e-init", type=float, default=None, help="initial eligibility rate (cue 0.1, maze 0.01)"
    )
    g.add_argument(
        "--env-kwargs", default="{}", help="JSON options for the environment, e.g. '{\"fixed_cues\": true}'"
    )
    g.add_argument(
        "--unroll",
        default="auto",
        choices=["auto", "reference", "fast", "chunked"],
        help="acting/learning implementation: 'auto' = the fused kernel where it applies (else 'chunked' for learning), 'reference' = the plain rules op by op, 'chunked' = the plain rules in checkpointed 16-step segments (any device)",
    )
    q = p.add_argument_group("plastic PPO (--algo plastic-ppo; defaults of common PPO implementations)")
    q.add_argument("--gae-lambda", type=float, default=0.95, help="GAE lambda (1 = Monte-Carlo returns)")
    q.add_argument("--clip-range", type=float, default=0.2, help="policy ratio clip epsilon")
    q.add_argument(
        "--value-clip",
        type=float,
        default=None,
        help="clip the value change around the acting value (off by default)",
    )
    q.add_argument("--ppo-epochs", type=int, default=4, help="epochs over each rollout")
    q.add_argument("--minibatches", type=int, default=3, help="minibatches of whole episodes per epoch")
    q.add_argument(
        "--no-normalize-advantage", action="store_true", help="do not normalise advantages per minibatch"
    )
    return p


#: train.py options (dest) that are fields of the saved config (option -> field)
RESUME_FIELDS = {
    "env": "env_id",
    "plasticity": "rule",
    "env_kwargs": "env_kwargs",
    "hidden_size": "hidden_size",
    "batch_size": "batch_size",
    "gamma": "gamma",
    "lr": "lr",
    "adam_eps": "adam_eps",
    "grad_clip": "grad_clip",
    "value_coef": "value_coef",
    "entropy_coef": "entropy_coef",
    "entropy_mode": "entropy_mode",
    "trace_clip": "trace_clip",
    "fanout": "fanout",
    "modulator_activation": "modulator_activation",
    "eta_init": "eta_init",
    "eta_e_init": "eta_e_init",
    "seed": "seed",
    "unroll": "unroll_impl",
    "gae_lambda": "gae_lambda",
    "clip_range": "clip_range",
    "value_clip": "value_clip",
    "ppo_epochs": "n_epochs",
    "minibatches": "n_minibatches",
}


def _requested_algo(argv: list[str]) -> str | None:
    """The --algo of this command line, or of the run folder being resumed (None if unknown)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo")
    pre.add_argument("--out")
    pre.add_argument("--resume", action="store_true")
    known, _ = pre.parse_known_args(argv)
    if known.algo is not None or not (known.resume and known.out):
        return known.algo
    try:
        with open(Path(known.out) / "config.json", encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None  # the full parser and the trainer report a missing or corrupt folder
    return saved.get("algo") if isinstance(saved, dict) else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "lm":
        from bpm_agents.lm.cli import train_main

        return train_main(argv[1:])
    if _requested_algo(argv) not in (None, "plastic-a2c", "plastic-ppo"):
        # SB3 peers have their own flags (--n-envs, --n-steps, ...): hand them the raw argv.
        try:
            from bpm_agents.sb3 import train_main as sb3_train_main
        except ImportError as exc:
            from bpm_envs.extras import as_missing_extra

            missing = as_missing_extra(exc, f"--algo {_requested_algo(argv)}")
            if missing is None:
                raise
            print(f"train.py: error: {missing}", file=sys.stderr)
            return EXIT_USAGE

        return sb3_train_main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            print(f"train.py: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return EXIT_USAGE
        import torch

        torch.set_num_threads(args.threads)

    from bpm_agents.a2c import A2CConfig, NonFiniteLossError
    from bpm_agents.checkpoint import CheckpointError
    from bpm_agents.devices import resolve_device
    from bpm_agents.training import explicit_options, read_run_config, resume_conflicts, train

    try:
        env_kwargs = json.loads(args.env_kwargs)
        if not isinstance(env_kwargs, dict):
            raise ValueError(f"--env-kwargs must be a JSON object, got {args.env_kwargs!r}")
        config = None
        if args.resume:
            meta = read_run_config(args.out)
            saved = meta["config"]
            given = explicit_options(parser, argv)
            if "algo" in given and given.pop("algo") != meta["algo"]:
                raise ValueError(
                    f"--resume: {args.out} was trained with --algo {meta['algo']}, not {args.algo}"
                )
            if "env_kwargs" in given:
                given["env_kwargs"] = env_kwargs
            if isinstance(saved, dict):  # a bad config is reported by train() below
                conflicts = resume_conflicts(given, saved, RESUME_FIELDS)
                if conflicts:
                    raise ValueError(
                        f"--resume keeps the saved config of {args.out}, but these flags differ "
                        f"from it: {'; '.join(conflicts)}. Drop them, or start a new run with "
                        "another --out"
                    )
        else:
            given = {  # flags left unset take the algorithm's (and task's) defaults
                k: v
                for k, v in dict(
                    gamma=args.gamma,
                    lr=args.lr,
                    adam_eps=args.adam_eps,
                    grad_clip=args.grad_clip,
                    value_coef=args.value_coef,
                    entropy_coef=args.entropy_coef,
                    entropy_mode=args.entropy_mode,
                ).items()
                if v is not None
            }
            common = dict(
                env_id=args.env,
                rule=args.plasticity,
                env_kwargs=env_kwargs,
                hidden_size=args.hidden_size,
                batch_size=args.batch_size,
                trace_clip=args.trace_clip,
                fanout=args.fanout,
                modulator_activation=args.modulator_activation,
                eta_init=args.eta_init,
                eta_e_init=args.eta_e_init,
                seed=args.seed,
                unroll_impl=args.unroll,
                **given,
            )
            if args.algo == "plastic-ppo":
                from bpm_agents.ppo import PPOConfig

                config = PPOConfig(
                    **common,
                    gae_lambda=args.gae_lambda,
                    clip_range=args.clip_range,
                    value_clip=args.value_clip,
                    n_epochs=args.ppo_epochs,
                    n_minibatches=args.minibatches,
                    normalize_advantage=not args.no_normalize_advantage,
                ).resolve()
            else:
                config = A2CConfig(**common).resolve()
        result = train(
            config,
            args.out,
            args.updates,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            device=resolve_device(args.device),
            progress=not args.no_progress,
            tensorboard=not args.no_tensorboard,
        )
    except (ValueError, CheckpointError, json.JSONDecodeError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as exc:
        print(f"train.py: stopped: {exc}. The last good checkpoint in {args.out} is kept.", file=sys.stderr)
        return EXIT_USAGE
    if result.nothing_to_do:
        print(
            f"nothing to do: run already has {result.updates_done} updates (asked for --updates {args.updates})"
        )
        return 0
    status = "interrupted, checkpoint saved" if result.interrupted else "done"
    print(
        f"{status}: {result.updates_done} updates, recent mean episode reward {result.recent_reward:.3f}, run folder {args.out}"
    )
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
