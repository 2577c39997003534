"""The sweep runner: every condition x seed of an experiment as an ordinary run folder.

Layout::

    OUT/sweep.json                    what was asked (experiment, protocol, per-run targets, failures)
    OUT/.locks/<condition>.seed<k>    held (flock) by the process training that run
    OUT/<condition>/seed<k>/          an ordinary run folder, as train.py writes it

Each run is one call of :func:`bpm_agents.training.train` in a worker process on one torch
thread (:func:`run_one`); the same function is the Ray task. Before anything starts, every
existing folder is checked against the config the experiment resolves to: equal and finished ->
skipped, equal and unfinished -> resumed, different -> the whole sweep is refused (exit 2), so a
sweep never mixes two protocols in one folder. Folders written by ``train.py`` with the same
settings are adopted as they are.

Local workers are ``spawn``-ed processes of a ``ProcessPoolExecutor``: spawn because forking a
process that has loaded torch (OpenMP pools, the C++ kernel) is unsafe, and a pool because it
gives ``--workers`` at a time with results and errors returned as values. Workers run in their
own process group, so a terminal Ctrl-C reaches only the runner, which asks every worker to stop
after its current update and save (a second Ctrl-C aborts them); a worker whose runner died
(kill -9) notices within a second, saves and exits. A killed sweep so loses at most one
checkpoint interval per run, and the same command continues it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TextIO

from bpm_agents.checkpoint import StopOnSignals, not_a_folder
from bpm_agents.experiments.definitions import Experiment, resolve_run_config
from bpm_agents.training import algo_of

try:  # advisory locks between runners; absent on Windows, where runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

MANIFEST = "sweep.json"
LOCKS = ".locks"
#: local: a spawn process pool; ray: one Ray task per run; inline: this process, one run after
#: another (debugging, notebooks, tests: no process start-up)
BACKENDS = ("local", "ray", "inline")


class SweepError(ValueError):
    """A sweep that cannot start (bad input or a folder that does not fit), with the reason."""


# ---------------------------------------------------------------- small helpers


def parse_seeds(spec: str) -> list[int]:
    """``"0-4"`` -> [0..4], ``"0,3,7-8"`` -> [0, 3, 7, 8]; sorted, without repeats."""
    seeds: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                a, b = int(lo), int(hi)
                if a > b:
                    raise ValueError
                seeds.update(range(a, b + 1))
            else:
                seeds.add(int(part))
        except ValueError:
            raise SweepError(
                f"bad seed list {spec!r} at {part!r}; use e.g. 0-4 or 0,2,5-7 (non-negative integers)"
            ) from None
    if any(s < 0 for s in seeds):
        raise SweepError(f"bad seed list {spec!r}: seeds must be >= 0")
    return sorted(seeds)


def run_key(condition: str, seed: int) -> str:
    return f"{condition}/seed{seed}"


def run_dir_of(out: str | Path, condition: str, seed: int) -> Path:
    return Path(out) / condition / f"seed{seed}"


def lock_path(out: str | Path, condition: str, seed: int) -> Path:
    return Path(out) / LOCKS / f"{condition}.seed{seed}.lock"


def last_logged_update(progress_csv: str | Path) -> int:
    """The ``update`` of the last complete row of a progress.csv (0 if none), reading its head
    line and its tail only. A row is complete when it has as many columns as the head line (a
    run being trained may have half a row at the end; logs of older versions have fewer columns)."""
    path = Path(progress_csv)
    try:
        with path.open("rb") as f:
            columns = f.readline().count(b",") + 1
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return 0
    for line in reversed(tail.splitlines()):
        head = line.split(",", 1)[0]
        if head.isdigit() and line.count(",") >= columns - 1:
            return int(head)
    return 0


def read_rewards(progress_csv: str | Path) -> list[float]:
    """The ``reward_mean`` column of a progress.csv, in update order.

    A run being trained may have half a row at the end (it is being written): that row, short of
    the head line's last column, is left out.
    """
    out = []
    with Path(progress_csv).open(newline="") as f:
        reader = csv.DictReader(f)
        last = reader.fieldnames[-1] if reader.fieldnames else "update"
        for r in reader:
            if not r.get("update", "").isdigit() or r.get(last) is None:
                continue
            out.append(float(r["reward_mean"]))
    return out


class Skips(NamedTuple):
    """Gradient steps a run skipped (norm above its ``grad_skip``), from its progress.csv."""

    skipped: int  # over the whole log
    steps: int  # gradient steps the logged updates took
    first_update: int | None  # the first update with a skipped step
    recent_skipped: int  # over the last ``window`` updates
    recent_steps: int


def gradient_steps_per_update(run_config: dict[str, Any]) -> int | None:
    """Gradient steps one update takes, from a run's config.json (``{"algo": .., "config": ..}``):
    1 for plastic A2C, ``n_epochs * n_minibatches`` for plastic PPO, ``None`` for other algorithms."""
    cfg = run_config.get("config", {})
    if run_config.get("algo") == "plastic-a2c":
        return 1
    if run_config.get("algo") == "plastic-ppo":
        return int(cfg["n_epochs"]) * int(cfg["n_minibatches"])
    return None


def read_skips(run_dir: str | Path, window: int) -> Skips | None:
    """How many gradient steps the run in ``run_dir`` skipped, in all and in its last ``window``
    updates; ``None`` if its log has no ``skipped_steps`` column (older runs, other algorithms).

    A run whose gradients explode and stay above ``grad_skip`` skips nearly every step: it is
    frozen, and its curve alone does not show why.
    """
    run_dir = Path(run_dir)
    try:
        per_update = gradient_steps_per_update(json.loads((run_dir / "config.json").read_text()))
        with (run_dir / "progress.csv").open(newline="") as f:
            rows = [
                (int(r["update"]), int(float(r["skipped_steps"])))
                for r in csv.DictReader(f)
                if r.get("update", "").isdigit() and r.get("skipped_steps") not in (None, "")
            ]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if per_update is None or not rows:
        return None
    recent = rows[-window:]
    return Skips(
        skipped=sum(n for _, n in rows),
        steps=per_update * len(rows),
        first_update=next((u for u, n in rows if n > 0), None),
        recent_skipped=sum(n for _, n in recent),
        recent_steps=per_update * len(recent),
    )


def read_wall_times(progress_csv: str | Path) -> list[float]:
    """The ``wall_time`` column of a progress.csv: training seconds so far, summed over every
    session of the run (a resumed run continues the clock), in update order; [] if unreadable.
    A row cut short (being written) is left out."""
    out = []
    try:
        with Path(progress_csv).open(newline="") as f:
            for r in csv.DictReader(f):
                try:
                    if r.get("update", "").isdigit():
                        out.append(float(r["wall_time"]))
                except (KeyError, TypeError, ValueError):
                    continue
    except OSError:
        return []
    return out


def seconds_per_update(progress_csv: str | Path) -> float:
    """Median training seconds per update over the last rows of a progress.csv (nan if unknown)."""
    return _median_update_seconds(read_wall_times(progress_csv))


def _median_update_seconds(walls: list[float]) -> float:
    steps = sorted(b - a for a, b in zip(walls[-50:], walls[-49:]) if b >= a)
    return steps[len(steps) // 2] if steps else math.nan


def lock_is_held(path: Path) -> bool:
    """Whether another process holds the run's lock (False if there is no lock file)."""
    if fcntl is None or not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def saved_form(config: Any) -> dict[str, Any]:
    """A config as its run folder's config.json holds it (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict()))


def config_diff(
    existing: dict[str, Any], expected: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[str]:
    """Fields where two config dicts differ, as ``field: folder=X, experiment=Y`` strings.

    A field missing from ``existing`` but named in ``defaults`` counts as that default: a run
    folder written before an option existed ran with the option's default (new options default
    to the old behaviour), so it still resumes.
    """
    defaults = defaults or {}
    diffs = []
    for key in sorted(set(existing) | set(expected)):
        a = existing.get(key, defaults.get(key, "<missing>"))
        b = expected.get(key, "<missing>")
        if a != b:
            diffs.append(f"{key}: folder={a!r}, experiment={b!r}")
    return diffs


# ---------------------------------------------------------------- what to do with each run


@dataclass
class PlannedRun:
    """One condition x seed of a sweep and what the runner will do with it."""

    condition: str
    seed: int
    run_dir: str
    config: dict[str, Any]
    updates: int
    action: str = "new"  # new | resume | finished | restart
    updates_done: int = 0
    detail: str = ""
    #: the learner (the protocol's ``algo``)
    algo: str = "plastic-a2c"

    @property
    def key(self) -> str:
        return run_key(self.condition, self.seed)


def inspect_run(
    run_dir: str | Path, expected: dict[str, Any], updates: int, algo: str = "plastic-a2c"
) -> tuple[str, int, str]:
    """What to do with ``run_dir`` for a run of ``algo`` whose resolved config is ``expected``.

    Fields the folder's config predates count as their defaults (see ``config_diff``).

    Returns ``(action, updates_done, detail)`` with action ``new``, ``resume``, ``finished`` or
    ``restart`` (a folder whose run never saved its first checkpoint).

    Raises:
        SweepError: the folder holds a different run, or is unreadable.
    """
    from bpm_agents.checkpoint import CheckpointError, load_checkpoint
    from bpm_agents.training import (
        CHECKPOINT_FILE,
        CONFIG_FILE,
        PROGRESS_FILE,
        read_run_config,
        trainer_classes,
    )

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise SweepError(
                f"{run_dir} is not empty but has no {CONFIG_FILE}: it is not a run folder; move it away"
            )
        return "new", 0, ""
    try:
        meta = read_run_config(run_dir)
    except CheckpointError as exc:
        raise SweepError(str(exc)) from None
    if meta["algo"] != algo:
        raise SweepError(f"{run_dir} holds a {meta['algo']!r} run, not a {algo!r} run of this experiment")
    config_cls = trainer_classes()[algo][0]
    diffs = config_diff(meta["config"], expected, saved_form(config_cls()))
    if diffs:
        raise SweepError(
            f"{run_dir} holds a run with another config than this experiment and protocol give; "
            f"differing fields: {'; '.join(diffs)}. Use another --out, or the protocol it was run with"
        )
    if not (run_dir / CHECKPOINT_FILE).exists():
        if last_logged_update(run_dir / PROGRESS_FILE) == 0:
            return "restart", 0, "its first checkpoint was never written"
        raise SweepError(f"{run_dir} has logged updates but no {CHECKPOINT_FILE}; it cannot be resumed")
    try:
        done = int(load_checkpoint(run_dir / CHECKPOINT_FILE)["trainer"]["updates_done"])
    except (CheckpointError, KeyError, TypeError, ValueError) as exc:
        raise SweepError(f"{run_dir}: cannot read its checkpoint: {exc}") from None
    if done >= updates:
        return "finished", done, ""
    return "resume", done, ""


def plan_sweep(
    experiment: Experiment,
    protocol: str,
    seeds: list[int],
    updates: int,
    out: str | Path,
    conditions: list[str] | None = None,
) -> list[PlannedRun]:
    """Resolve every run's config and check every existing folder (nothing is written).

    Args:
        conditions: only these conditions (names of the experiment's; default all), e.g. to
            bring two conditions to more seeds first.
    Raises:
        SweepError / ExperimentError: with every unusable folder named.
    """
    if updates < 1:
        raise SweepError(f"--updates must be >= 1, got {updates}")
    if not seeds:
        raise SweepError("no seeds given")
    names = [c.name for c in experiment.conditions]
    unknown = [c for c in conditions or [] if c not in names]
    if unknown:
        raise SweepError(
            f"experiment {experiment.name!r} has no condition {', '.join(map(repr, unknown))}; "
            f"conditions: {', '.join(names)}"
        )
    runs: list[PlannedRun] = []
    problems: list[str] = []
    for cond in experiment.conditions:
        if conditions and cond.name not in conditions:
            continue
        for seed in seeds:
            resolved = resolve_run_config(experiment, cond, protocol, seed)
            config = saved_form(resolved)
            run = PlannedRun(cond.name, seed, str(run_dir_of(out, cond.name, seed)), config, updates,
                             algo=algo_of(resolved))  # fmt: skip
            try:
                run.action, run.updates_done, run.detail = inspect_run(run.run_dir, config, updates, run.algo)
            except SweepError as exc:
                problems.append(str(exc))
            runs.append(run)
    if problems:
        raise SweepError("\n".join(problems))
    return runs


# ---------------------------------------------------------------- the manifest


def read_manifest(out: str | Path) -> dict[str, Any] | None:
    """``OUT/sweep.json`` or None if absent; a corrupt one raises :class:`SweepError`."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SweepError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or "experiment" not in data:
        raise SweepError(f"{path} is not a sweep manifest")
    return data


def _write_manifest(out: Path, data: dict[str, Any]) -> None:
    from bpm_agents.checkpoint import atomic_write_json

    atomic_write_json(out / MANIFEST, data)


def _updated_manifest(
    out: Path, experiment: Experiment, protocol: str, runs: list[PlannedRun], command: str
) -> dict[str, Any]:
    old = read_manifest(out)
    if old is not None:
        if old["experiment"].get("name") != experiment.name or old.get("protocol") != protocol:
            raise SweepError(
                f"{out} holds a sweep of experiment {old['experiment'].get('name')!r} with protocol "
                f"{old.get('protocol')!r}, not {experiment.name!r} / {protocol!r}; use another --out"
            )
    targets = dict(old.get("targets", {})) if old else {}
    targets.update({r.key: r.updates for r in runs})
    commands = list(old.get("commands", [])) if old else []
    if command and (not commands or commands[-1] != command):
        commands.append(command)
    return {
        "experiment": experiment.to_dict(),
        "protocol": protocol,
        "targets": targets,
        "failures": dict(old.get("failures", {})) if old else {},
        "commands": commands,
    }


# ---------------------------------------------------------------- one run, in a worker

#: worker-process state (set by _worker_init in pool workers; untouched under Ray)
_STOP = threading.Event()
_WORKER: dict[str, Any] = {"parent": None, "stop": None, "abort": None, "in_task": False}


def _worker_init(stop_event: Any, abort_event: Any, parent_pid: int) -> None:
    """Pool worker set-up: own process group, signals, and a watchdog thread.

    Own process group: a terminal Ctrl-C goes to the runner only, which then asks each worker to
    stop cleanly through ``stop_event``. SIGTERM sent to a worker directly means the same.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda s, f: _STOP.set())
    # train()'s handler takes only SIGINT here, which the watchdog alone sends. Were it to take
    # SIGTERM as well, a `pkill -TERM` that hits the runner and this worker at once would count
    # twice (the worker's own SIGTERM, then the watchdog relaying the runner's stop) whenever both
    # arrive during one long torch op, and the second would abort the run without saving.
    StopOnSignals.SIGNALS = (signal.SIGINT,)
    _WORKER.update(parent=parent_pid, stop=stop_event, abort=abort_event)
    threading.Thread(target=_watchdog, daemon=True).start()


def _train_handler_active() -> Any:
    """The StopOnSignals of a train() call in progress in this process, or None."""
    owner = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
    return owner if isinstance(owner, StopOnSignals) else None


def _watchdog() -> None:
    """Turn "stop" (runner asked, runner died, SIGTERM) into the Ctrl-C that train() handles:
    one SIGINT = stop after this update and save; a second (abort) = stop now."""
    delivered = 0
    while True:
        time.sleep(0.2)
        parent_gone = os.getppid() != _WORKER["parent"]
        if parent_gone or (_WORKER["stop"] is not None and _WORKER["stop"].is_set()):
            _STOP.set()
        if parent_gone and not _WORKER["in_task"]:
            os._exit(0)  # nobody will ever send this worker another task
        wanted = (
            2
            if (_WORKER["abort"] is not None and _WORKER["abort"].is_set())
            else (1 if _STOP.is_set() else 0)
        )
        handler = _train_handler_active()
        if handler is None:
            delivered = 0
            continue
        already = 1 if handler.requested else 0
        if wanted > max(delivered, already):
            os.kill(os.getpid(), signal.SIGINT)
            delivered = max(delivered, already) + 1


def run_one(task: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume, or skip) one run of a sweep; the body of a worker process or Ray task.

    ``task`` holds ``run_dir``, ``lock``, ``config`` (resolved dict), ``updates``,
    ``checkpoint_every``, ``device``, ``tensorboard``, ``busy_window`` and ``condition``/``seed``.
    Returns a plain dict (``status``: done, finished, interrupted, aborted, diverged, busy, error).
    """
    import torch

    torch.set_num_threads(1)  # one thread per run: runs share the cores, threads would spin
    result = {"condition": task["condition"], "seed": task["seed"], "updates_done": 0, "message": ""}
    lock_fd = None
    try:
        lock_file = Path(task["lock"])
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is not None:
            lock_fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return {**result, "status": "busy", "message": "another sweep process is training it"}
        busy = _written_by_someone_else(Path(task["run_dir"]), task.get("busy_window"))
        if busy:
            return {**result, "status": "busy", "message": busy}
        return {**result, **_train_task(task)}
    except KeyboardInterrupt:
        return {
            **result,
            "status": "aborted",
            "message": "aborted by a second interrupt; the last checkpoint is kept",
        }
    except Exception as exc:  # a bug or an environment problem: reported, the sweep goes on
        return {
            **result,
            "status": "error",
            "message": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # releases the flock


def _written_by_someone_else(run_dir: Path, window: float | None) -> str:
    """Non-empty (the reason) if the run's progress.csv keeps changing: a train.py elsewhere is
    training this folder and a second writer would corrupt it. A run that was just stopped
    (Ctrl-C, kill) is written once more at most, so after one quiet window it is ours."""
    progress = run_dir / "progress.csv"
    if not progress.exists():
        return ""
    if window is None:
        spu = seconds_per_update(progress)
        window = min(120.0, max(10.0, 3 * spu)) if math.isfinite(spu) else 10.0
    before = progress.stat().st_mtime
    age = time.time() - before
    if age >= window:
        return ""
    time.sleep(window - age)
    if progress.stat().st_mtime != before:
        return (
            f"{progress} is being written by another process (not this sweep), e.g. a train.py "
            "still running on it; the sweep does not touch it. Rerun when it has stopped"
        )
    return ""


def _in_worker(fn: Callable[[dict[str, Any]], dict[str, Any]], task: dict[str, Any]) -> dict[str, Any]:
    """Run one pool task unless the pool is stopping. A worker may already hold the next task
    when a stop arrives (the executor queues ahead), so the check is here, not in the parent."""
    if _STOP.is_set() or (_WORKER["stop"] is not None and _WORKER["stop"].is_set()):
        return {"condition": task.get("condition"), "seed": task.get("seed"), "updates_done": 0,
                "status": "interrupted", "message": "sweep stopping; not started"}  # fmt: skip
    _WORKER["in_task"] = True
    try:
        outcome = fn(task)
    finally:
        _WORKER["in_task"] = False
    if outcome.get("status") in ("interrupted", "aborted"):
        _STOP.set()  # a signal stopped this run (a SIGTERM to this worker): it means the pool
    return outcome


def _train_task(task: dict[str, Any]) -> dict[str, Any]:
    from bpm_agents.a2c import NonFiniteLossError
    from bpm_agents.training import CONFIG_FILE, PROGRESS_FILE, train, trainer_classes

    run_dir = Path(task["run_dir"])
    algo = task.get("algo", "plastic-a2c")
    action, done, _ = inspect_run(run_dir, task["config"], task["updates"], algo)  # recheck under the lock
    if action == "finished":
        return {"status": "finished", "updates_done": done}
    if action == "restart":  # a run killed before its first checkpoint: nothing to keep
        for name in (CONFIG_FILE, PROGRESS_FILE):
            (run_dir / name).unlink(missing_ok=True)
    config = trainer_classes()[algo][0].from_dict(task["config"])
    try:
        result = train(
            None if action == "resume" else config,
            run_dir,
            task["updates"],
            resume=action == "resume",
            checkpoint_every=task["checkpoint_every"],
            device=task.get("device", "cpu"),
            progress=False,
            tensorboard=bool(task.get("tensorboard", False)),
        )
    except NonFiniteLossError as exc:
        return {
            "status": "diverged",
            "updates_done": last_logged_update(run_dir / PROGRESS_FILE),
            "message": f"{exc}; the last good checkpoint is kept",
        }
    status = "interrupted" if result.interrupted else "done"
    return {"status": status, "updates_done": result.updates_done}


# ---------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    """How a sweep ended: per-run outcomes and counts by status."""

    outcomes: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False

    def count(self, *statuses: str) -> int:
        return sum(o["status"] in statuses for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        if self.interrupted or self.count("interrupted", "aborted"):
            return 130
        return 1 if self.count("diverged", "error", "busy") else 0


class Progress:
    """The one-line sweep progress on stderr, computed from the runs' progress.csv files."""

    def __init__(self, runs: list[PlannedRun], label: str, stream: TextIO | None, every: float) -> None:
        self.runs, self.label, self.stream, self.every = runs, label, stream, every
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.start_done = self._updates_done()
        self.last_print = -math.inf
        self.finished: set[str] = set()

    def _updates_done(self) -> int:
        return sum(min(r.updates, last_logged_update(Path(r.run_dir) / "progress.csv")) for r in self.runs)

    def line(self) -> str:
        done = self._updates_done()
        total = sum(r.updates for r in self.runs)
        elapsed = time.monotonic() - self.start
        rate = (done - self.start_done) / elapsed if elapsed > 0 else 0.0
        eta = _fmt_duration((total - done) / rate) if rate > 0 else "?"
        return (
            f"[{self.label}] runs {len(self.finished)}/{len(self.runs)} finished | updates "
            f"{done:,}/{total:,} ({100 * done / max(total, 1):.1f}%) | {rate:.2f} upd/s | ETA {eta}"
        )

    def tick(self, force: bool = False) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not force and now - self.last_print < self.every:
            return
        self.last_print = now
        text = self.line()
        if self.tty:
            self.stream.write("\r" + text.ljust(100))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.stream is None:
            return
        self.stream.write(("\r" + " " * 100 + "\r" if self.tty else "") + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.tick(force=True)
        if self.tty and self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def run_sweep(
    experiment: Experiment,
    out: str | Path,
    seeds: list[int],
    updates: int,
    protocol: str = "paper",
    workers: int = 1,
    checkpoint_every: int = 50,
    backend: str = "local",
    ray_address: str | None = None,
    device: str = "cpu",
    tensorboard: bool = False,
    stream: TextIO | None = sys.stderr,
    progress_every: float | None = None,
    busy_window: float | None = None,
    command: str = "",
    conditions: list[str] | None = None,
) -> SweepResult:
    """Run (or continue) every condition x seed of ``experiment`` into ``out``.

    Args:
        seeds: seeds of every condition. updates: target updates of every run (total, not added).
        workers: runs at a time. checkpoint_every: checkpoint interval (the most a kill loses).
        backend: ``local`` (process pool) or ``ray`` (one Ray task per run; ``ray_address`` joins
            a cluster, else a local Ray instance with ``workers`` CPUs).
        stream: where the progress line goes (None: silent). progress_every: seconds between
            progress lines (default 2 on a terminal, 60 otherwise).
        busy_window: seconds a run's progress.csv must stay quiet before the runner trusts it is
            not being trained by another process (None: from the run's speed, 10-120 s).
        conditions: only these conditions of the experiment (default: all).
    Raises:
        SweepError / ExperimentError: nothing was started (bad input, a folder that does not fit).
    """
    if workers < 1:
        raise SweepError(f"--workers must be >= 1, got {workers}")
    if checkpoint_every < 1:
        raise SweepError(f"--checkpoint-every must be >= 1, got {checkpoint_every}")
    if backend not in BACKENDS:
        raise SweepError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    out = Path(out)
    runs = plan_sweep(experiment, protocol, seeds, updates, out, conditions)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _updated_manifest(out, experiment, protocol, runs, command)
    _write_manifest(out, manifest)

    label = f"{experiment.name}/{protocol}"
    progress = Progress(runs, label, stream, progress_every or (2.0 if _isatty(stream) else 60.0))
    todo = [r for r in runs if r.action != "finished"]
    counts = {a: sum(r.action == a for r in runs) for a in ("new", "resume", "finished", "restart")}
    progress.message(
        f"[{label}] {len(runs)} runs in {out}: {counts['new'] + counts['restart']} new, "
        f"{counts['resume']} to resume, {counts['finished']} finished (skipped); "
        f"{workers} at a time on {backend}"
    )
    result = SweepResult()
    for r in runs:
        if r.action == "finished":
            progress.finished.add(r.key)
            result.outcomes.append(
                {
                    "condition": r.condition,
                    "seed": r.seed,
                    "status": "finished",
                    "updates_done": r.updates_done,
                    "message": "",
                }
            )
    tasks = [
        {
            "condition": r.condition,
            "seed": r.seed,
            "run_dir": r.run_dir,
            "lock": str(lock_path(out, r.condition, r.seed)),
            "config": r.config,
            "algo": r.algo,
            "updates": r.updates,
            "checkpoint_every": checkpoint_every,
            "device": device,
            "tensorboard": tensorboard,
            "busy_window": busy_window,
        }
        for r in todo
    ]

    def record(outcome: dict[str, Any]) -> None:
        key = run_key(outcome["condition"], outcome["seed"])
        result.outcomes.append(outcome)
        if outcome["status"] in ("done", "finished"):
            progress.finished.add(key)
            manifest["failures"].pop(key, None)
        elif outcome["status"] in ("diverged", "error", "busy"):
            manifest["failures"][key] = {
                k: outcome.get(k)
                for k in ("status", "message", "updates_done", "traceback")
                if outcome.get(k)
            }
            progress.message(f"[{label}] {key}: {outcome['status']}: {outcome['message']}")
        _write_manifest(out, manifest)

    if tasks:
        if backend == "local":
            result.interrupted = run_local_pool(run_one, tasks, workers, record, progress)
        elif backend == "inline":
            result.interrupted = _run_inline(tasks, record, progress)
        else:
            result.interrupted = _run_ray(tasks, workers, ray_address, record, progress)
    progress.close()
    return result


def _isatty(stream: TextIO | None) -> bool:
    return bool(stream is not None and getattr(stream, "isatty", lambda: False)())


class Ticker(Protocol):
    """What a pool reports to: :class:`Progress`, or anything with these two methods."""

    def tick(self) -> None: ...

    def message(self, text: str) -> None: ...


def run_local_pool(
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    tasks: list[dict[str, Any]],
    workers: int,
    record: Callable[[dict[str, Any]], None],
    progress: Ticker,
) -> bool:
    """Run ``fn(task)`` for every task on a spawn process pool; returns True if interrupted.

    ``fn`` must be importable by the workers (a module-level function) and train through
    :func:`bpm_agents.training.train` or the run layer, whose signal handler the workers' watchdog
    drives. Each task is a dict with ``condition``, ``seed`` and ``run_dir``; ``record`` gets each
    outcome dict (``status`` ``interrupted`` for a task stopped before it started, ``error`` for a
    worker that died). Ctrl-C or SIGTERM to this process (or SIGTERM to a worker) stops the pool
    cleanly: running tasks finish their update and save, queued ones never start; a second
    interrupt aborts the running ones (their last checkpoint is kept).
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    stop, abort = ctx.Event(), ctx.Event()
    interrupts = 0
    # SIGTERM to the runner means what Ctrl-C means: stop cleanly, keep every run resumable
    previous_term = (
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        if threading.current_thread() is threading.main_thread()
        else None
    )
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the spawned workers
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(stop, abort, os.getpid()),
    )
    try:
        futures: dict[Future, dict[str, Any]] = {pool.submit(_in_worker, fn, t): t for t in tasks}
        pending = set(futures)
        while pending:
            try:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in done:
                    record(_outcome(fut, futures[fut]))
                progress.tick()
            except KeyboardInterrupt:
                interrupts += 1
                if interrupts == 1:
                    stop.set()
                    for fut in pending:
                        fut.cancel()  # not started yet: nothing to save
                    progress.message(
                        "stopping: each running run finishes its update and saves a checkpoint "
                        "(interrupt again to abort now; the last checkpoint is kept)"
                    )
                else:
                    abort.set()
                pending = {f for f in pending if not f.cancelled()}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    return interrupts > 0


def _run_inline(
    tasks: list[dict[str, Any]], record: Callable[[dict[str, Any]], None], progress: Progress
) -> bool:
    """Run the tasks in this process one after another; returns True if interrupted (Ctrl-C:
    train() stops the current run after its update and saves it, and the sweep stops)."""
    import torch

    threads = torch.get_num_threads()
    try:
        for task in tasks:
            outcome = run_one(task)
            record(outcome)
            progress.tick()
            if outcome["status"] in ("interrupted", "aborted"):
                return True
    finally:
        torch.set_num_threads(threads)  # run_one sets one thread; give the caller its own back
    return False


def _outcome(fut: Future, task: dict[str, Any]) -> dict[str, Any]:
    try:
        return fut.result()
    except Exception as exc:  # the worker process itself died (out of memory, killed)
        return {
            "condition": task["condition"],
            "seed": task["seed"],
            "status": "error",
            "updates_done": last_logged_update(Path(task["run_dir"]) / "progress.csv"),
            "message": f"worker process failed: {type(exc).__name__}: {exc}",
        }


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _run_ray(
    tasks: list[dict[str, Any]],
    workers: int,
    address: str | None,
    record: Callable[[dict[str, Any]], None],
    progress: Progress,
) -> bool:
    """One Ray task per run (the same :func:`run_one`); returns True if interrupted.

    On a cluster every node must see ``OUT`` at the same path (a shared filesystem): the runs
    write their folders there and the runner reads progress from there.
    """
    try:
        import ray
    except ImportError:
        raise SweepError(
            "--backend ray needs Ray: pip install 'backpropamine-gym[ray]' (or pip install 'ray>=2.9')"
        ) from None
    started_here = not ray.is_initialized()
    if started_here:
        env = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}}
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, runtime_env=env, log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=0)(run_one)
    interrupted = False
    try:
        refs = {remote.remote(t): t for t in tasks}
        pending = list(refs)
        while pending:
            try:
                done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in done:
                    try:
                        record(ray.get(ref))
                    except Exception as exc:  # the task's worker died
                        t = refs[ref]
                        record(
                            {
                                "condition": t["condition"],
                                "seed": t["seed"],
                                "status": "error",
                                "updates_done": last_logged_update(Path(t["run_dir"]) / "progress.csv"),
                                "message": f"Ray task failed: {type(exc).__name__}: {exc}",
                            }
                        )
                progress.tick()
            except KeyboardInterrupt:
                # a cancelled Ray task gets a KeyboardInterrupt: runs keep their last checkpoint
                interrupted = True
                progress.message("stopping: cancelling the Ray tasks (each run keeps its last checkpoint)")
                for ref in pending:
                    ray.cancel(ref)
                pending = []
    finally:
        if started_here:
            ray.shutdown()
    return interrupted


# ---------------------------------------------------------------- status


@dataclass
class RunStatus:
    """One row of ``status DIR``."""

    condition: str
    seed: int
    updates_logged: int
    updates_saved: int | None
    target: int | None
    recent_reward: float
    state: str
    recent_skipped: tuple[int, int] | None = None  # (skipped, taken) gradient steps, last window
    train_seconds: float = math.nan  # training time so far, all sessions together

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def discover_runs(out: str | Path) -> list[tuple[str, int]]:
    """``(condition, seed)`` of every ``OUT/<condition>/seed<k>/config.json``, sorted."""
    found = []
    for cfg in Path(out).glob("*/seed*/config.json"):
        name = cfg.parent.name
        if name[4:].isdigit():
            found.append((cfg.parent.parent.name, int(name[4:])))
    return sorted(found)


def sweep_status(
    out: str | Path,
    target: int | None = None,
    window: int = 100,
    experiment: Experiment | None = None,
    seeds: list[int] | None = None,
) -> list[RunStatus]:
    """The state of every run of the sweep in ``out`` (expected ones from sweep.json, or from
    ``experiment`` x ``seeds``, plus any run folder found), with updates, the mean reward of the
    last ``window`` updates and a state: done, running, stopped, failed (..), pending."""
    from bpm_agents.checkpoint import CheckpointError, load_checkpoint

    out = Path(out)
    if not out.is_dir():
        raise SweepError(f"sweep folder {out} {not_a_folder(out)}")
    manifest = read_manifest(out) or {}
    targets: dict[str, int] = dict(manifest.get("targets", {}))
    failures: dict[str, Any] = manifest.get("failures", {})
    keys: dict[tuple[str, int], None] = {}
    order = [c["name"] for c in manifest.get("experiment", {}).get("conditions", [])]
    if experiment is not None:
        order = [c.name for c in experiment.conditions]
        for cond in order:
            for seed in seeds or []:
                keys[(cond, seed)] = None
    for key in targets:
        cond, seed_text = key.rsplit("/seed", 1)
        keys[(cond, int(seed_text))] = None
    for cond, seed in discover_runs(out):
        keys[(cond, seed)] = None
    rank = {c: i for i, c in enumerate(order)}
    rows = []
    for cond, seed in sorted(keys, key=lambda k: (rank.get(k[0], len(rank)), k[0], k[1])):
        run_dir = run_dir_of(out, cond, seed)
        progress = run_dir / "progress.csv"
        goal = target if target is not None else targets.get(run_key(cond, seed))
        logged = last_logged_update(progress)
        saved = None
        try:
            saved = int(load_checkpoint(run_dir / "checkpoint.pt")["trainer"]["updates_done"])
        except (CheckpointError, KeyError, TypeError, ValueError):
            pass
        rewards: list[float] = []
        if progress.exists():
            try:
                rewards = read_rewards(progress)[-window:]
            except (OSError, ValueError, KeyError):
                rewards = []
        recent = sum(rewards) / len(rewards) if rewards else math.nan
        walls = read_wall_times(progress) if progress.exists() else []
        spu = _median_update_seconds(walls)
        quiet = max(60.0, 3 * spu) if math.isfinite(spu) else 60.0
        fresh = progress.exists() and time.time() - progress.stat().st_mtime < quiet
        lock = lock_path(out, cond, seed)
        # a runner's run is running iff its lock is held; a folder without a lock file may be
        # trained by a plain train.py, seen only by its progress.csv changing
        if lock_is_held(lock) or (not lock.exists() and fresh and (goal is None or (saved or 0) < goal)):
            state = "running"
        elif goal is not None and saved is not None and saved >= goal:
            state = "done"
        elif run_key(cond, seed) in failures:
            state = f"failed ({failures[run_key(cond, seed)].get('status', '?')})"
        elif saved is None and logged == 0:
            state = "pending"
        else:
            state = "stopped"
        skips = read_skips(run_dir, window) if progress.exists() else None
        recent_skipped = (skips.recent_skipped, skips.recent_steps) if skips else None
        train = walls[-1] if walls else math.nan
        rows.append(RunStatus(cond, seed, logged, saved, goal, recent, state, recent_skipped, train))
    return rows


def format_status(rows: list[RunStatus], window: int = 100) -> str:
    """The status table as text."""
    head = [
        "condition",
        "seed",
        "updates",
        "saved",
        f"last-{window} reward",
        f"last-{window} skipped",
        "train time",
        "state",
    ]
    body = []
    for r in rows:
        body.append(
            [
                r.condition,
                str(r.seed),
                f"{r.updates_logged}/{r.target if r.target is not None else '?'}",
                "-" if r.updates_saved is None else str(r.updates_saved),
                "-" if math.isnan(r.recent_reward) else f"{r.recent_reward:.2f}",
                "-" if r.recent_skipped is None else "{:,}/{:,}".format(*r.recent_skipped),
                _fmt_duration(r.train_seconds) if math.isfinite(r.train_seconds) else "-",
                r.state,
            ]
        )
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
    states = [r.state.split(" ")[0] for r in rows]
    summary = ", ".join(
        f"{states.count(s)} {s}"
        for s in ("done", "running", "stopped", "failed", "pending")
        if states.count(s)
    )
    lines.append(f"{len(rows)} runs: {summary or 'none'}")
    return "\n".join(lines)


def status_json(rows: list[RunStatus]) -> str:
    buf = io.StringIO()
    json.dump(
        [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.to_dict().items()}
            for r in rows
        ],
        buf,
        indent=2,
    )
    return buf.getvalue()
