"""The command line of the SB3 peers: ``bpm train --algo ppo|a2c|recurrent-ppo`` (:func:`train_main`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from bpm_agents.checkpoint import CheckpointError
from bpm_agents.config import Flags, add_run_flags, set_threads
from bpm_agents.devices import resolve_device
from bpm_agents.sb3.adapter import NativeVecEnv
from bpm_agents.sb3.checkpoints import load_model_config
from bpm_agents.sb3.config import ALGO_DEFAULTS, ALGOS, SB3Config
from bpm_agents.sb3.training import train
from bpm_envs.extras import MissingExtraError

#: the --algo choices of ``bpm train`` that are our own plastic agents, not SB3's
PLASTIC_ALGOS = ("plastic-a2c", "plastic-ppo")
#: dest prefix of the plastic agents' flags, accepted so the message can say why they are refused
_PLASTIC = "plastic__"


def build_parser(
    prog: str = "bpm train --algo ppo|a2c|recurrent-ppo",
) -> tuple[argparse.ArgumentParser, Flags]:
    """The parser of ``bpm train --algo ppo|a2c|recurrent-ppo``, and its generated flags."""
    from bpm_agents.ppo import PPOConfig

    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Train a Stable-Baselines3 PPO / A2C (feed-forward MLP) or sb3-contrib RecurrentPPO "
            "(LSTM) on a bpm/ Gymnasium environment. Writes config.json, checkpoint.pt, "
            "progress.csv and TensorBoard logs to --out. Defaults are SB3's except --n-envs and, "
            "for PPO, --n-steps."
        ),
    )
    p.add_argument(
        "--algo",
        default=None,
        choices=[*PLASTIC_ALGOS, *ALGOS],
        help="the SB3 algorithm (required unless --resume, which reads it from the run folder)",
    )
    add_run_flags(
        p,
        updates="total number of rollout-and-update cycles of the run (one = --n-envs x --n-steps env steps)",
        resume="continue the run in --out bit for bit (the checkpoint also holds the global generators, the running episodes, the last observation and LSTM states). The saved config is kept: only --updates, --device, --checkpoint-every, --threads and the logging flags apply; a hyper-parameter flag whose value differs from the saved one is refused (exit 2). With --updates at or below the updates done, nothing is trained (exit 0)",
    )
    flags = Flags()
    g = p.add_argument_group("SB3 hyper-parameters (default: SB3's per algorithm)")
    per_algo = {algo: {**SB3Config().to_dict(), **ALGO_DEFAULTS[algo]} for algo in ALGOS}
    flags.add(g, SB3Config, defaults=per_algo)
    taken = {spec.flag for spec in flags.flags.values()} | {
        "--" + a.lstrip("-") for s in flags.flags.values() for a in s.aliases
    }
    plastic = [
        f.name
        for f in dataclasses.fields(PPOConfig)
        if "--" + Flags._metadata(PPOConfig, f.name).get("flag", f.name).replace("_", "-") not in taken
    ]
    flags.add(p, PPOConfig, fields=plastic, hidden=True, dest_prefix=_PLASTIC)
    return p, flags


def train_main(argv: list[str], prog: str = "bpm train") -> int:
    """``bpm train --algo ppo|a2c|recurrent-ppo ...``: exit 0 done, 130 interrupted, 2 on errors."""
    parser, flags = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        plastic_only = flags.given(args, prefix=_PLASTIC)
        if plastic_only:
            names = ", ".join(flags.flag_of(k, _PLASTIC) for k in plastic_only)
            raise ValueError(f"{names}: only for --algo plastic-a2c or plastic-ppo (our plastic agents)")
        set_threads(args.threads)
        if args.algo in PLASTIC_ALGOS:
            raise ValueError(f"--algo {args.algo} is trained by our own trainer, not by bpm_agents.sb3")
        given = flags.given(args)
        config = None
        if args.resume:
            saved = load_model_config(args.out)
            if args.algo is not None and args.algo != saved.algo:
                raise ValueError(f"{args.out} was trained with --algo {saved.algo}, not {args.algo}")
            conflicts = flags.conflicts(given, saved.to_dict())
            if conflicts:
                raise ValueError(
                    f"--resume keeps the saved config of {args.out}, but these flags differ "
                    f"from it: {'; '.join(conflicts)}. Drop them, or start a new run with "
                    "another --out"
                )
        else:
            if args.algo is None:
                raise ValueError(f"--algo is required for a new run; allowed: {', '.join(ALGOS)}")
            config = SB3Config(algo=args.algo, **given).resolve()
            # fail before writing anything if the env options are wrong
            NativeVecEnv(config.env_id, 1, config.env_kwargs).close()
        result = train(
            config,
            args.out,
            args.updates,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            device=resolve_device(args.device),
            progress=args.progress,
            tensorboard=args.tensorboard,
            command=[*prog.split(), *argv],
        )
    except (ValueError, TypeError, CheckpointError, MissingExtraError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if result.nothing_to_do:
        print(
            f"nothing to do: run already has {result.updates_done} updates (asked for --updates {args.updates})"
        )
        return 0
    print(result.summary(args.out))
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
