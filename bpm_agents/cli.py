"""The ``bpm`` command line: one entry point for training, evaluation, experiments and the demo.

::

    bpm train --env bpm/CueReward-v0 --plasticity retroactive --updates 5000 --out runs/cue
    bpm train --algo plastic-ppo ...            # plastic PPO
    bpm train --algo ppo|a2c|recurrent-ppo ...  # Stable-Baselines3 / sb3-contrib peers
    bpm train-lm --variant simple --data path/to/ptb
    bpm evaluate RUN ...                        # any run folder: RL, SB3 or language model
    bpm experiment run|status|report|list ...
    bpm demo --gif maze.gif

``train.py``, ``evaluate.py`` and ``experiment.py`` are thin shims over :func:`main`
(``python train.py ARGS`` is ``bpm train ARGS``, ``train.py lm ARGS`` is ``bpm train-lm ARGS``).
Every setting flag is generated from its config dataclass (:mod:`bpm_agents.config`). Bad input
prints one line naming the value and returns exit code 2.
"""

from __future__ import annotations

import os
import sys

# Idle OpenMP threads of torch spin by default; on a CPU shared with other jobs that costs up to
# 40x on these small models. Must be set before torch loads (users may still override it): the
# bpm_agents package imports lazily, so torch is not loaded yet when the console script gets here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bpm_envs.checks import int_at_least  # noqa: E402

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
PROG = "bpm"

#: the subcommands and their one-line descriptions (``bpm --help``)
COMMANDS = {
    "train": "train a plastic agent (A2C or PPO) or a Stable-Baselines3 peer (--algo ppo|a2c|recurrent-ppo)",
    "train-lm": "train a (plastic) LSTM language model on a PTB-style corpus",
    "evaluate": "evaluate a run folder: RL and SB3 runs (mean reward, GIFs, Fig. 3) or language models (perplexity)",
    "experiment": "run, follow and report the paper's experiments (run, status, report, list)",
    "demo": "a random policy on a bpm/ environment, in a window or as a GIF",
}
#: the algorithms of our own trainer; the others are SB3 peers
PLASTIC_ALGOS = ("plastic-a2c", "plastic-ppo")


def run_kind(run_dir: str | os.PathLike[str]) -> str | None:
    """``"rl"``, ``"sb3"`` or ``"lm"`` for a run folder (:func:`bpm_agents.runs.run_kind`), ``"lm"``
    for a language-model ``.pt`` checkpoint, ``None`` when it is missing or not a run (the
    evaluator of RL runs then says what is wrong)."""
    path = Path(run_dir)
    if path.is_file() and path.suffix == ".pt":
        return "lm"
    from bpm_agents.checkpoint import CheckpointError
    from bpm_agents.runs import run_kind as kind_of

    try:
        return kind_of(path)
    except CheckpointError:
        return None


def _error(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """``parse_args``, with argparse's own exits (help: 0, usage errors: 2) as return codes."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


# ====================================================================== bpm train (plastic)
def train_parser(prog: str = f"{PROG} train") -> tuple[argparse.ArgumentParser, Any]:
    """The parser of ``bpm train`` for our plastic agents, and its generated :class:`Flags`."""
    from bpm_agents.a2c import A2CConfig
    from bpm_agents.config import Flags, add_run_flags
    from bpm_agents.ppo import PPOConfig

    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Meta-train a recurrent actor-critic with differentiable (neuromodulated) plasticity "
            "by A2C (the paper's) or PPO on a bpm/ Gymnasium environment. Writes config.json, "
            "checkpoint.pt, progress.csv and TensorBoard logs to --out. Language models: "
            f"'{PROG} train-lm'."
        ),
    )
    p.add_argument(
        "--algo",
        default=None,
        choices=[*PLASTIC_ALGOS, "a2c", "ppo", "recurrent-ppo"],
        help="our plastic A2C (the paper's) or plastic PPO (whole-episode minibatches), or a "
        f"Stable-Baselines3 / sb3-contrib peer ('{prog} --algo ppo --help' lists the peers' flags); "
        "--resume reads it from the run folder (default: plastic-a2c)",
    )
    add_run_flags(
        p,
        updates="total number of updates of the run (one update = --batch-size episodes)",
        resume="continue the run in --out from its checkpoint, bit for bit. The saved config is kept: only --updates, --device, --checkpoint-every, --threads and the logging flags apply; a model, A2C or PPO flag whose value differs from the saved one is refused (exit 2), one with the same value is accepted. With --updates at or below the updates done, nothing is trained (exit 0)",
    )
    flags = Flags()
    labels = {"plastic-a2c": A2CConfig, "plastic-ppo": PPOConfig}
    g = p.add_argument_group(
        "model and A2C (default: the paper's per-task values; plastic PPO's where they differ)"
    )
    flags.add(g, A2CConfig, defaults=labels)
    a2c_fields = {f for f in A2CConfig.__dataclass_fields__}
    q = p.add_argument_group("plastic PPO (--algo plastic-ppo; defaults of common PPO implementations)")
    flags.add(q, PPOConfig, fields=[f for f in PPOConfig.__dataclass_fields__ if f not in a2c_fields])
    return p, flags


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
        saved = json.loads((Path(known.out) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # the full parser and the trainer report a missing or corrupt folder
    return saved.get("algo") if isinstance(saved, dict) else None


def train_main(argv: list[str], prog: str = f"{PROG} train") -> int:
    """``bpm train``: exit 0 done, 130 interrupted, 2 on bad input or a diverged run."""
    if argv and argv[0] == "lm":  # the old spelling 'train.py lm ...'
        return train_lm_main(argv[1:], prog=f"{prog} lm")
    algo = _requested_algo(argv)
    if algo not in (None, *PLASTIC_ALGOS):
        try:
            from bpm_agents.sb3 import train_main as sb3_train_main
        except ImportError as exc:
            from bpm_envs.extras import as_missing_extra

            missing = as_missing_extra(exc, f"--algo {algo}")
            if missing is None:
                raise
            return _error(prog, str(missing))
        return sb3_train_main(argv, prog=prog)
    parser, flags = train_parser(prog)
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args

    from bpm_agents.a2c import A2CConfig, NonFiniteLossError
    from bpm_agents.checkpoint import CheckpointError
    from bpm_agents.config import set_threads
    from bpm_agents.devices import resolve_device
    from bpm_agents.ppo import PPOConfig
    from bpm_agents.training import read_run_config, train

    try:
        set_threads(args.threads)
        given = flags.given(args)
        config = None
        if args.resume:
            meta = read_run_config(args.out)
            if args.algo is not None and args.algo != meta["algo"]:
                raise ValueError(
                    f"--resume: {args.out} was trained with --algo {meta['algo']}, not {args.algo}"
                )
            if isinstance(meta["config"], dict):  # a bad config is reported by train() below
                conflicts = flags.conflicts(given, meta["config"])
                if conflicts:
                    raise ValueError(
                        f"--resume keeps the saved config of {args.out}, but these flags differ "
                        f"from it: {'; '.join(conflicts)}. Drop them, or start a new run with "
                        "another --out"
                    )
        else:
            cls = PPOConfig if args.algo == "plastic-ppo" else A2CConfig
            foreign = [flags.flag_of(k) for k in given if k not in cls.__dataclass_fields__]
            if foreign:
                raise ValueError(f"{', '.join(foreign)}: only for --algo plastic-ppo")
            config = cls(**given).resolve()
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
    except (ValueError, CheckpointError) as exc:
        return _error(prog, str(exc))
    except NonFiniteLossError as exc:
        print(f"{prog}: stopped: {exc}. The last good checkpoint in {args.out} is kept.", file=sys.stderr)
        return EXIT_USAGE
    if result.nothing_to_do:
        print(
            f"nothing to do: run already has {result.updates_done} updates (asked for --updates {args.updates})"
        )
        return 0
    print(result.summary(args.out))
    return EXIT_INTERRUPTED if result.interrupted else 0


# ====================================================================== bpm train-lm
def train_lm_main(argv: list[str], prog: str = f"{PROG} train-lm") -> int:
    """``bpm train-lm``: the Penn Treebank language models."""
    from bpm_agents.lm.cli import train_main as lm_train_main

    return lm_train_main(argv, prog=prog)


# ====================================================================== bpm evaluate
def evaluate_parser(prog: str = f"{PROG} evaluate") -> argparse.ArgumentParser:
    """The parser of ``bpm evaluate`` for RL and SB3 run folders."""
    from bpm_agents.config import DefaultsHelpFormatter

    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Load the policy saved in a run folder (our plastic A2C / PPO or a Stable-Baselines3 "
            "model) and evaluate it on its environment: mean episode reward with a 95% confidence "
            "interval (normal approximation, 1.96 * sample std / sqrt(n)); for the cue task also "
            "the fraction of correct answers by trial index within the episode. Episode j uses "
            "env seed SEED + j."
        ),
        epilog=(
            "A language-model run (a 'train-lm' run folder or a .pt checkpoint) is evaluated for "
            "its perplexity instead, with other flags (--data, --split, --batch-size, --bptt, "
            f"--impl, --json): '{prog} LM_RUN --help' lists them."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("run_dir", help="run folder written by train (config.json + checkpoint)")
    p.add_argument(
        "--episodes",
        type=int_at_least(0),
        default=200,
        help="episodes to evaluate (0: skip the evaluation, e.g. to only plot)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the episodes and of action sampling")
    p.add_argument("--deterministic", action="store_true", help="greedy (argmax) actions instead of sampling")
    p.add_argument(
        "--batch-size", type=int_at_least(1), default=50, help="episodes run together in lock-step"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object with all results, nothing else on stdout"
    )
    p.add_argument("--render", choices=["human"], default=None, help="show episodes in a pygame-ce window")
    p.add_argument(
        "--render-episodes", type=int_at_least(1), default=1, help="episodes shown with --render human"
    )
    p.add_argument("--gif", default=None, metavar="PATH", help="save episodes as an animated GIF")
    p.add_argument("--gif-episodes", type=int_at_least(1), default=1, help="episodes recorded in the GIF")
    p.add_argument(
        "--plot-modulator",
        default=None,
        metavar="PATH",
        help="draw the paper's Fig. 3 for one episode (cue: cue raster, reward, M(t); maze: reward hits, M(t)); modulated rules only",
    )
    p.add_argument(
        "--device", default="auto", choices=["cpu", "cuda", "auto"], help="'auto' = cuda if available"
    )
    return p


def evaluate_main(argv: list[str], prog: str = f"{PROG} evaluate") -> int:
    """``bpm evaluate RUN``: dispatches on the run's kind (RL / SB3 policy or language model)."""
    if argv and argv[0] == "lm" and len(argv) > 1:  # the old spelling 'evaluate.py lm ...'
        from bpm_agents.lm.cli import evaluate_main as lm_evaluate_main

        return lm_evaluate_main(argv[1:])
    run = next((a for a in argv if not a.startswith("-")), None)
    kind = run_kind(run) if run is not None else None
    if kind == "lm" or (kind is None and run is not None and "--data" in argv):
        from bpm_agents.lm.cli import evaluate_main as lm_evaluate_main

        return lm_evaluate_main(argv, prog=prog)
    args = _parse(evaluate_parser(prog), argv)
    if isinstance(args, int):
        return args
    return _evaluate_policy(args, prog)


def _evaluate_policy(args: argparse.Namespace, prog: str) -> int:
    from bpm_agents import evaluation as ev

    def note(message: str) -> None:
        print(f"{prog}: {message}", file=sys.stderr)

    from bpm_agents.checkpoint import writable_file

    results: dict = {"run_dir": args.run_dir}
    try:
        # outputs are checked before the evaluation runs, not after it
        if args.gif:
            writable_file(args.gif, "--gif")
        if args.plot_modulator:
            writable_file(args.plot_modulator, "--plot-modulator")
        agent = ev.load_agent(args.run_dir, args.device)
        results["env_id"] = agent.env_id
        results["algo"] = getattr(agent, "algo", None)
        if args.episodes == 0 and not (args.render or args.gif or args.plot_modulator):
            note("--episodes 0 and nothing else asked: only checked that the run loads")
        if args.episodes > 0:
            result = ev.evaluate(
                agent,
                episodes=args.episodes,
                seed=args.seed,
                deterministic=args.deterministic,
                batch_size=args.batch_size,
            )
            results.update(result.to_dict())
            if not args.json:
                print(result.format_table())
        if args.render == "human":
            totals = ev.render_episodes(agent, args.render_episodes, args.seed, args.deterministic)
            results["rendered_episode_rewards"] = totals
        if args.gif:
            path, totals = ev.record_gif(agent, args.gif, args.gif_episodes, args.seed, args.deterministic)
            results["gif"] = str(path)
            results["gif_episode_rewards"] = totals
            if not args.json:
                print(f"saved {len(totals)} episode(s) to {path}")
        if args.plot_modulator:
            try:
                path, _trace = ev.plot_modulator(agent, args.plot_modulator, args.seed, args.deterministic)
                results["modulator_plot"] = str(path)
                if not args.json:
                    print(f"saved the modulator plot to {path}")
            except ev.NoModulatorError as exc:
                note(f"no modulator plot: {exc}")
                results["modulator_plot"] = None
                only_plot = args.episodes == 0 and not args.gif and args.render is None
                if only_plot:
                    return EXIT_USAGE
    except (ValueError, ev.CheckpointError, ev.MissingExtraError) as exc:
        note(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        note("interrupted")
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(results))
    return 0


# ====================================================================== bpm experiment, bpm demo
def experiment_main(argv: list[str], prog: str = f"{PROG} experiment") -> int:
    """``bpm experiment run|status|report|list``."""
    from bpm_agents.experiments.cli import main as experiments_main

    return experiments_main(argv, prog=prog)


def demo_main(argv: list[str], prog: str = f"{PROG} demo") -> int:
    """``bpm demo``: :func:`bpm_envs.demo.run` with the demo's own flags."""
    try:
        from bpm_envs import demo
    except ImportError as exc:
        return _error(prog, str(exc))
    parser = demo.build_parser()
    parser.prog = prog
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    try:
        if args.gif is not None:
            from bpm_agents.checkpoint import writable_file

            writable_file(args.gif, "--gif")  # before the episodes run, not after
        demo.run(args.env, args.episodes, args.seed, args.render, args.gif, args.steps)
    except (ValueError, OSError) as exc:
        return _error(prog, str(exc))
    except ImportError as exc:  # a missing 'render' extra
        return _error(prog, str(exc))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


# ====================================================================== bpm
HANDLERS = {
    "train": train_main,
    "train-lm": train_lm_main,
    "evaluate": evaluate_main,
    "experiment": experiment_main,
    "demo": demo_main,
}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """``bpm --help``: the subcommands, one line each (each has its own ``--help``)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Neuromodulated plastic recurrent agents and language models (Backpropamine).",
        epilog=f"'{prog} COMMAND --help' lists the flags of a command.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the ``bpm`` command line (``argv`` without the program name); return the exit code.

    ``prog`` names the program in usage and messages of the subcommand (the shims pass
    ``train.py`` and so on); by default ``bpm COMMAND``.
    """
    if argv is None:
        argv = sys.argv[1:]
    argv = [str(a) for a in argv]
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0 if argv else EXIT_USAGE
    command, rest = argv[0], argv[1:]
    if command not in HANDLERS:
        build_parser().print_usage(sys.stderr)
        return _error(PROG, f"unknown command {command!r}; allowed: {', '.join(HANDLERS)}")
    prog = prog or f"{PROG} {command}"
    try:
        return HANDLERS[command](rest, prog=prog)
    except OSError as exc:  # a disk that fills or goes read-only mid-run: the user's to fix, not a bug
        where = f" ({exc.filename})" if exc.filename else ""
        return _error(prog, f"{exc.strerror or exc}{where}")


if __name__ == "__main__":
    sys.exit(main())
