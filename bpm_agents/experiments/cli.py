"""Command line of the experiments: ``run``, ``status``, ``report``, ``list``.

Examples::

    python experiment.py list                       # the built-in experiments
    python experiment.py list fig2                  # one as JSON: a template for your own
    python experiment.py run fig2 --seeds 0-4 --updates 3000 --workers 2 --out sweeps/fig2
    python experiment.py status sweeps/fig2
    python experiment.py report sweeps/fig2         # sweeps/fig2/report.{txt,json,png}, _curves.csv
    python experiment.py run my_experiment.json --seeds 0-2 --updates 500 --out sweeps/mine

``main(argv)`` is self-contained (returns the exit code, never raises for bad input), so it can be
mounted as a subcommand of another command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from bpm_agents.config import DefaultsHelpFormatter, add_run_flags

EXIT_USAGE = 2
PROG = "experiment.py"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Run the paper's experiments (or your own, defined in JSON) as sweeps of ordinary run "
            "folders, follow them, and report their curves and the paper's claims."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,status,report,list}")
    d = DefaultsHelpFormatter

    r = sub.add_parser(
        "run",
        formatter_class=d,
        help="run (or continue) every condition x seed of an experiment",
        description="Run every condition x seed as OUT/<condition>/seed<k>/ (the folder train.py "
        "writes). Rerunning the same command continues unfinished runs and skips finished ones.",
        epilog="exit codes: 0 every run reached --updates; 1 some run diverged, failed or was "
        "busy (being trained by another process; see sweep.json); 2 bad input or a folder "
        "that does not fit (nothing started); 130 interrupted (rerun to continue)",
    )
    r.add_argument(
        "experiment",
        help="a built-in experiment (fig1, a5, fig2, fig2-release) or a path to a .json definition",
    )
    r.add_argument("--seeds", default="0-4", help="seeds of every condition, e.g. 0-4 or 0,2,5-7")
    r.add_argument(
        "--conditions",
        default=None,
        help="only these conditions, comma-separated (default: all), e.g. simple-N100,hebbian-N101 "
        "to bring one claim's pair to more seeds first",
    )
    add_run_flags(
        r,
        out="sweep folder",
        updates="target updates of every run (total, not added)",
        updates_default=None,
        checkpoint_every=50,
        checkpoint_help="checkpoint interval in updates: the most a kill loses",
        device_default="cpu",
        threads=False,
        progress=False,
        tensorboard=False,
    )
    r.add_argument("--protocol", default="paper", help="named hyper-parameter protocol of the experiment")
    r.add_argument("--workers", type=int, default=1, help="runs at a time (each on one torch thread)")
    r.add_argument(
        "--backend",
        default="local",
        choices=["local", "ray", "inline"],
        help="local: a process pool; ray: one Ray task per run; inline: this process, one run after another (debugging)",
    )
    r.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (ray.init(address=...)); default: a local instance",
    )
    r.add_argument(
        "--progress-every",
        type=float,
        default=None,
        help="seconds between progress lines (default 2 on a terminal, 60 otherwise)",
    )
    r.add_argument("--dry-run", action="store_true", help="print what would be done and exit")

    s = sub.add_parser(
        "status",
        formatter_class=d,
        help="table of the runs of a sweep folder",
        description="One row per run: updates logged and saved, the mean reward and the gradient "
        "steps skipped (norm above grad_skip) of the last --window updates, the training time "
        "(all sessions together) and the state (done, running, stopped, failed, pending). A run "
        "that skips nearly every step is frozen.",
    )
    s.add_argument("dir", help="sweep folder")
    s.add_argument(
        "--updates", type=int, default=None, help="target updates (default: from the folder's sweep.json)"
    )
    s.add_argument(
        "--window", type=int, default=100, help="updates in the recent mean reward and skipped steps"
    )
    s.add_argument(
        "--experiment",
        default=None,
        help="list this experiment's runs too (pending ones included), e.g. for a folder without sweep.json",
    )
    s.add_argument("--seeds", default=None, help="with --experiment: its seeds, e.g. 0-4")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")

    rep = sub.add_parser(
        "report",
        formatter_class=d,
        help="figure, table and claims of a sweep folder",
        description="Reads the run folders only. Writes PREFIX.txt, PREFIX.json, PREFIX.png "
        "and PREFIX_curves.csv and prints the text.",
    )
    rep.add_argument("dir", help="sweep folder")
    rep.add_argument(
        "--experiment",
        default=None,
        help="experiment whose conditions and claims to use (default: the folder's sweep.json)",
    )
    rep.add_argument("--out", default=None, help="output prefix (default: DIR/report)")
    rep.add_argument("--window", type=int, default=100, help="moving-average window in updates")
    rep.add_argument(
        "--marks", default=None, help="comma-separated updates of the table (default: about 6 round ones)"
    )
    rep.add_argument(
        "--seeds", default=None, help="only these seeds' runs, e.g. 0-1 or 0,2,5-7 (default: every seed)"
    )

    ls = sub.add_parser("list", help="the built-in experiments, or one of them as JSON")
    ls.add_argument("name", nargs="?", default=None, help="print this experiment's definition as JSON")
    return p


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Run the experiments command line; returns the exit code (2 for bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
        args.argv = argv
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    # Idle OpenMP threads spin on a shared CPU; must be set before torch loads (kept if set)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from bpm_agents.checkpoint import OutputError
    from bpm_agents.experiments.definitions import ExperimentError
    from bpm_agents.experiments.report import ReportError
    from bpm_agents.experiments.runner import SweepError

    try:
        return {"run": _run, "status": _status, "report": _report, "list": _list}[args.command](args, prog)
    except (ExperimentError, SweepError, ReportError, OutputError) as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # e.g. a read-only or full --out: the user's to fix, not a bug
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"{prog} {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, prog: str) -> int:
    from bpm_agents.checkpoint import writable_dir
    from bpm_agents.devices import resolve_device
    from bpm_agents.experiments.definitions import get_experiment
    from bpm_agents.experiments.runner import SweepError, parse_seeds, plan_sweep, ray_available, run_sweep

    experiment = get_experiment(args.experiment)
    experiment.protocol(args.protocol)  # a clear error before anything else
    seeds = parse_seeds(args.seeds)
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()] if args.conditions else None
    if args.backend == "ray" and not ray_available():
        raise SweepError(
            "--backend ray needs Ray, which is not installed: pip install 'backpropamine-gym[ray]' "
            "(or pip install 'ray>=2.9')"
        )
    if args.ray_address and args.backend != "ray":
        raise SweepError("--ray-address needs --backend ray")
    if args.dry_run:
        runs = plan_sweep(experiment, args.protocol, seeds, args.updates, args.out, conditions)
        for r in runs:
            extra = f" (from update {r.updates_done})" if r.action == "resume" else ""
            print(f"{r.action:9s} {r.run_dir}{extra}")
        return 0
    writable_dir(args.out, "--out")
    command = " ".join(shlex.quote(a) for a in [prog, *args.argv])  # recorded in sweep.json
    result = run_sweep(
        experiment,
        args.out,
        seeds,
        args.updates,
        protocol=args.protocol,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        backend=args.backend,
        ray_address=args.ray_address,
        device=str(resolve_device(args.device)),
        tensorboard=args.tensorboard,
        progress_every=args.progress_every,
        command=command,
        conditions=conditions,
    )
    counts = {
        s: result.count(s)
        for s in ("done", "finished", "interrupted", "aborted", "diverged", "busy", "error")
    }
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    print(f"{experiment.name}/{args.protocol} in {args.out}: {summary or 'nothing to do'}")
    if result.exit_code == 130:
        print("stopped; rerun the same command to continue", file=sys.stderr)
    elif result.exit_code:
        print(
            f"some runs did not finish; details in {Path(args.out) / 'sweep.json'}; "
            f"'{prog} status {args.out}' shows them",
            file=sys.stderr,
        )
    return result.exit_code


def _status(args: argparse.Namespace, prog: str) -> int:
    from bpm_agents.experiments.runner import SweepError, format_status, status_json, sweep_status

    if args.window < 1:
        raise SweepError(f"--window must be >= 1, got {args.window}")
    from bpm_agents.experiments.definitions import get_experiment
    from bpm_agents.experiments.runner import parse_seeds

    if args.seeds and not args.experiment:
        raise SweepError("--seeds needs --experiment")
    experiment = get_experiment(args.experiment) if args.experiment else None
    seeds = parse_seeds(args.seeds) if args.seeds else None
    rows = sweep_status(args.dir, target=args.updates, window=args.window, experiment=experiment, seeds=seeds)
    if not rows:
        raise SweepError(
            f"{args.dir} holds no runs of a sweep (no sweep.json and no <condition>/seed<k>/ folders)"
        )
    print(status_json(rows) if args.json else format_status(rows, args.window))
    return 0


def _report(args: argparse.Namespace, prog: str) -> int:
    from bpm_agents.checkpoint import not_a_folder, writable_file
    from bpm_agents.experiments.definitions import experiment_from_dict, get_experiment
    from bpm_agents.experiments.report import ReportError, build_report, write_report
    from bpm_agents.experiments.runner import parse_seeds, read_manifest

    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    if args.window < 1:
        raise ReportError(f"--window must be >= 1, got {args.window}")
    marks = None
    if args.marks:
        try:
            marks = [int(m) for m in args.marks.split(",")]
        except ValueError:
            raise ReportError(f"--marks must be comma-separated integers, got {args.marks!r}") from None
    if not Path(args.dir).is_dir():
        raise ReportError(f"sweep folder {args.dir} {not_a_folder(args.dir)}")
    prefix = Path(args.out) if args.out else Path(args.dir) / "report"
    writable_file(prefix.with_name(prefix.name + ".txt"), "--out")  # before the report is built
    manifest = read_manifest(args.dir) if Path(args.dir).is_dir() else None
    protocol = manifest.get("protocol") if manifest else None
    if args.experiment:
        experiment = get_experiment(args.experiment)
    elif manifest:
        experiment = experiment_from_dict(manifest["experiment"], source=str(Path(args.dir) / "sweep.json"))
    else:
        experiment = None
    report = build_report(
        args.dir, experiment, window=args.window, marks=marks, protocol=protocol, seeds=seeds
    )
    paths = write_report(report, prefix)
    print(report.text(), end="")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _list(args: argparse.Namespace, prog: str) -> int:
    from bpm_agents.experiments.definitions import BUILTIN, get_experiment

    if args.name:
        print(json.dumps(get_experiment(args.name).to_dict(), indent=2))
        return 0
    for e in BUILTIN.values():
        opts = f" {json.dumps(e.env_kwargs)}" if e.env_kwargs else ""
        print(f"{e.name}: {e.env_id}{opts}; protocols: {', '.join(e.protocols)}")
        print(f"  {e.description}")
        print(f"  conditions: {', '.join(c.name for c in e.conditions)}")
        for c in e.claims:
            print(f"  claim: {c.label}{' (significant)' if c.significant else ''}: {c.text}")
    print(f"\nYour own: write a JSON file like '{prog} list fig2' prints and pass its path to 'run'.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
