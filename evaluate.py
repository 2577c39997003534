#!/usr/bin/env python
"""Evaluate a trained agent saved by train.py: mean reward with a 95% CI, GIFs, Fig. 3 plots.

Examples:
    python evaluate.py runs/cue-retro --episodes 200
    python evaluate.py runs/cue-retro --json > results.json
    python evaluate.py runs/maze-simple --render human
    python evaluate.py runs/maze-simple --gif maze.gif --gif-episodes 2
    python evaluate.py runs/cue-retro --plot-modulator fig3.png
    python evaluate.py lm --help        # Penn Treebank language models (see README)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Idle OpenMP threads of torch spin by default; on a CPU shared with other jobs that costs up to
# 40x on these small models. Must be set before torch loads (users may still override it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description=(
            "Load the policy saved in a train.py run folder (our plastic A2C or a Stable-Baselines3 "
            "model) and evaluate it on its environment: mean episode reward with a 95% confidence "
            "interval (normal approximation, 1.96 * sample std / sqrt(n)); for the cue task also "
            "the fraction of correct answers by trial index within the episode. Episode j uses "
            "env seed SEED + j. Use 'evaluate.py lm ...' for the Penn Treebank language models."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run_dir", help="run folder written by train.py (config.json + checkpoint)")
    p.add_argument(
        "--episodes",
        type=_count(0),
        default=200,
        help="episodes to evaluate (0: skip the evaluation, e.g. to only plot)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the episodes and of action sampling")
    p.add_argument("--deterministic", action="store_true", help="greedy (argmax) actions instead of sampling")
    p.add_argument("--batch-size", type=_count(1), default=50, help="episodes run together in lock-step")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object with all results, nothing else on stdout"
    )
    p.add_argument("--render", choices=["human"], default=None, help="show episodes in a pygame-ce window")
    p.add_argument("--render-episodes", type=_count(1), default=1, help="episodes shown with --render human")
    p.add_argument("--gif", default=None, metavar="PATH", help="save episodes as an animated GIF")
    p.add_argument("--gif-episodes", type=_count(1), default=1, help="episodes recorded in the GIF")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "lm":
        from bpm_agents.lm.cli import evaluate_main

        return evaluate_main(argv[1:])
    args = build_parser().parse_args(argv)

    from bpm_agents import evaluation as ev

    def note(message: str) -> None:
        print(f"evaluate.py: {message}", file=sys.stderr)

    results: dict = {"run_dir": args.run_dir}
    try:
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
                path, trace = ev.plot_modulator(agent, args.plot_modulator, args.seed, args.deterministic)
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


if __name__ == "__main__":
    sys.exit(main())
