"""End to end: train.py and evaluate.py as a user runs them (subprocesses), on tiny runs.

Tiny runs: hidden size 8, batch 4, episodes of 30 steps, the reference unroll. Subprocesses run
with one torch thread: on a shared 2-core machine, thread oversubscription makes these tiny
updates tens of times slower.
"""

import csv
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from bpm_agents.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CUE = "bpm/CueReward-v0"
MAZE = "bpm/PlasticMaze-v0"
T = 30
ENV = {
    **os.environ,
    "SDL_VIDEODRIVER": "dummy",
    "MPLBACKEND": "Agg",
    "OMP_NUM_THREADS": "1",
    "PYGAME_HIDE_SUPPORT_PROMPT": "1",
}
TINY = [
    "--batch-size",
    "4",
    "--hidden-size",
    "8",
    "--env-kwargs",
    json.dumps({"episode_length": T}),
    "--unroll",
    "reference",
    "--no-progress",
    "--no-tensorboard",
]


def command(script: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / script), *map(str, args)]


def run(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(script, *args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def train_args(out: Path, env: str = CUE, rule: str = "retroactive", updates: int = 4) -> list[str]:
    return [
        "--env",
        env,
        "--plasticity",
        rule,
        "--updates",
        str(updates),
        "--seed",
        "3",
        "--out",
        str(out),
        *TINY,
    ]


def progress_rows(run_dir: Path) -> list[dict[str, str]]:
    """progress.csv rows without the wall-clock column (the only part allowed to differ)."""
    with (run_dir / "progress.csv").open(newline="") as f:
        return [{k: v for k, v in row.items() if k != "wall_time"} for row in csv.DictReader(f)]


def assert_same_state(a, b, where: str = "") -> None:
    """Exact equality of nested checkpoint contents (tensors compared bit for bit)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 4-update cue run and a 3-update maze run, trained concurrently."""
    base = tmp_path_factory.mktemp("cli")
    jobs = {
        "cue": subprocess.Popen(
            command("train.py", *train_args(base / "cue")),
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        "maze": subprocess.Popen(
            command("train.py", *train_args(base / "maze", MAZE, "simple", 3)),
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
    }
    for name, job in jobs.items():
        out, err = job.communicate(timeout=180)
        assert job.returncode == 0, f"{name}: {err}"
        assert out.startswith("done: ")
    return {"base": base, "cue": base / "cue", "maze": base / "maze"}


def test_train_writes_a_complete_run_folder(runs):
    for name, updates, env in [("cue", 4, CUE), ("maze", 3, MAZE)]:
        d = runs[name]
        meta = json.loads((d / "config.json").read_text())
        assert meta["algo"] == "plastic-a2c" and meta["config"]["env_id"] == env
        assert meta["config"]["env_kwargs"] == {"episode_length": T}
        rows = progress_rows(d)
        assert [int(r["update"]) for r in rows] == list(range(1, updates + 1))
        assert [int(r["env_steps"]) for r in rows] == [4 * T * u for u in range(1, updates + 1)]
        assert all(math.isfinite(float(r["loss"])) for r in rows)
        state = load_checkpoint(d / "checkpoint.pt")
        assert state["env_id"] == env and state["trainer"]["updates_done"] == updates
    # rewards on the cue task: each Go answer gives +-1 and a 30-step episode holds 3-6 trials
    assert all(abs(float(r["reward_mean"])) <= 6 for r in progress_rows(runs["cue"]))


def test_resume_equals_an_uninterrupted_run(runs):
    part = runs["base"] / "resumed"
    first = run("train.py", *train_args(part, updates=2))
    assert first.returncode == 0, first.stderr
    assert load_checkpoint(part / "checkpoint.pt")["trainer"]["updates_done"] == 2
    second = run("train.py", "--out", part, "--resume", "--updates", "4", "--no-progress", "--no-tensorboard")
    assert second.returncode == 0, second.stderr
    whole = load_checkpoint(runs["cue"] / "checkpoint.pt")
    resumed = load_checkpoint(part / "checkpoint.pt")
    assert_same_state(resumed, whole)
    assert progress_rows(part) == progress_rows(runs["cue"])
    # the wall-time column carries on across the resume instead of restarting at zero
    with (part / "progress.csv").open(newline="") as f:
        walls = [float(r["wall_time"]) for r in csv.DictReader(f)]
    assert len(walls) == 4 and walls == sorted(walls) and walls[0] > 0


def test_ctrl_c_saves_a_checkpoint_and_resume_continues(runs):
    out = runs["base"] / "interrupted"
    proc = subprocess.Popen(
        command("train.py", *train_args(out, updates=100000), "--checkpoint-every", "100000"),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "progress.csv").exists() and len(progress_rows(out)) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted, checkpoint saved" in stdout and "Traceback" not in stderr
    done = load_checkpoint(out / "checkpoint.pt")["trainer"]["updates_done"]
    assert done >= 1 and len(progress_rows(out)) == done
    target = max(4, done + 1)
    resumed = run(
        "train.py", "--out", out, "--resume", "--updates", str(target), "--no-progress", "--no-tensorboard"
    )
    assert resumed.returncode == 0, resumed.stderr
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["trainer"]["updates_done"] == target
    rows = progress_rows(out)
    assert [int(r["update"]) for r in rows] == list(range(1, target + 1))
    # same config and seed as the uninterrupted run: the interruption changes nothing
    assert rows[:4] == progress_rows(runs["cue"])
    if target == 4:
        assert_same_state(state, load_checkpoint(runs["cue"] / "checkpoint.pt"))


def test_evaluate_json_gif_and_modulator_plot(runs, tmp_path):
    gif, png = tmp_path / "cue.gif", tmp_path / "fig3.png"
    res = run(
        "evaluate.py",
        runs["cue"],
        "--episodes",
        "12",
        "--batch-size",
        "5",
        "--json",
        "--seed",
        "1",
        "--gif",
        gif,
        "--gif-episodes",
        "2",
        "--plot-modulator",
        png,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)  # the whole stdout is one JSON object
    assert data["episodes"] == 12 and len(data["episode_rewards"]) == 12
    for key in ("mean_reward", "ci95_half_width", "ci95_low", "ci95_high", "fraction_correct"):
        assert math.isfinite(data[key]), key
    assert data["mean_reward"] == pytest.approx(sum(data["episode_rewards"]) / 12)
    assert data["ci95_low"] == pytest.approx(data["mean_reward"] - data["ci95_half_width"])
    rows = data["correct_by_trial"]
    assert rows[0]["trial"] == 0 and rows[0]["answers"] == 12  # every episode answers trial 0
    assert sum(r["correct"] for r in rows) / sum(r["answers"] for r in rows) == pytest.approx(
        data["fraction_correct"]
    )
    assert data["gif"] == str(gif) and data["modulator_plot"] == str(png)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 2 * (T + 1)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 300
    assert png.stat().st_size > 10_000


def test_evaluate_maze_table_and_gif(runs, tmp_path):
    gif = tmp_path / "maze.gif"
    res = run("evaluate.py", runs["maze"], "--episodes", "4", "--gif", gif)
    assert res.returncode == 0, res.stderr
    assert "mean episode reward" in res.stdout and "95% CI" in res.stdout
    assert "correct" not in res.stdout  # no cue table for the maze
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == T + 1
        assert im.size == (352, 380)  # 11 x 11 cells of 32 px, the 10-px time bar, the caption


def bad_input_cases(runs, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(runs["cue"], corrupt)
    (corrupt / "checkpoint.pt").write_bytes(os.urandom(4096))
    other_env = tmp_path / "other"
    shutil.copytree(runs["cue"], other_env)
    meta = json.loads((other_env / "config.json").read_text())
    meta["config"]["env_id"] = MAZE
    (other_env / "config.json").write_text(json.dumps(meta))
    (tmp_path / "plain").mkdir()
    return {
        "unknown env": (
            ["train.py", *train_args(tmp_path / "a", env="bpm/Nope-v0")],
            "unknown env id 'bpm/Nope-v0'",
        ),
        "unknown plasticity": (
            ["train.py", *train_args(tmp_path / "b", rule="magic")],
            "invalid choice: 'magic'",
        ),
        "unknown env option": (
            ["train.py", *train_args(tmp_path / "d"), "--env-kwargs", '{"colour": 1}'],
            "bad env options {'colour': 1}",
        ),
        "hidden size 0": (
            ["train.py", *train_args(tmp_path / "c"), "--hidden-size", "0"],
            "hidden_size must be >= 1, got 0",
        ),
        "existing run folder": (["train.py", *train_args(runs["cue"])], "already holds a run"),
        "resume corrupted": (
            ["train.py", "--out", corrupt, "--resume", "--updates", "5"],
            "not a readable checkpoint",
        ),
        "missing run folder": (["evaluate.py", tmp_path / "nowhere"], "does not exist"),
        "not a run folder": (["evaluate.py", tmp_path / "plain"], "not a run folder"),
        "corrupted checkpoint": (["evaluate.py", corrupt], "not a readable checkpoint"),
        "checkpoint for another env": (
            ["evaluate.py", other_env],
            "checkpoint is for env 'bpm/CueReward-v0'",
        ),
    }


#: checked as real subprocesses (one per script); the other cases call main() in-process
SUBPROCESS_CASES = ("unknown env", "corrupted checkpoint")


def test_bad_input_exits_2_subprocess(runs, tmp_path):
    cases = bad_input_cases(runs, tmp_path)
    jobs = {
        name: subprocess.Popen(
            command(*cases[name][0]),
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in SUBPROCESS_CASES
    }
    for name, job in jobs.items():
        stdout, stderr = job.communicate(timeout=120)
        assert job.returncode == 2, f"{name}: rc={job.returncode} {stderr}"
        assert cases[name][1] in stderr, f"{name}: {stderr}"
        assert "Traceback" not in stderr and stdout == "", f"{name}: {stderr}"
    assert not (tmp_path / "a").exists()


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"cli_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bad_input_exits_2_in_process(runs, tmp_path, capsys):
    cases = bad_input_cases(runs, tmp_path)
    mains = {"train.py": load_script("train").main, "evaluate.py": load_script("evaluate").main}
    for name, (argv, message) in cases.items():
        if name in SUBPROCESS_CASES:
            continue
        try:
            code = mains[argv[0]]([str(a) for a in argv[1:]])
        except SystemExit as exc:  # argparse rejects bad choices itself, with exit status 2
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, f"{name}: {code} {err}"
        assert message in err, f"{name}: {err}"
    # the refused runs left the existing folder as it was and created nothing
    assert progress_rows(runs["cue"])[-1]["update"] == "4"
    assert not any((tmp_path / name).exists() for name in "bcd")


def test_train_py_routes_sb3_flags_and_resumes_by_the_saved_algo(tmp_path, capsys):
    """--algo ppo takes SB3's own flags; --resume without --algo reads the algo from the folder."""
    main = load_script("train").main
    out = tmp_path / "ppo"
    common = ["--no-progress", "--no-tensorboard", "--threads", "1"]
    assert (
        main(
            [
                "--algo",
                "ppo",
                "--env",
                "bpm/PlasticMaze-v0",
                "--n-envs",
                "2",
                "--n-steps",
                "16",
                "--minibatch-size",
                "16",
                "--n-epochs",
                "1",
                "--updates",
                "1",
                "--out",
                str(out),
                *common,
            ]
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["algo"] == "ppo"
    assert main(["--out", str(out), "--resume", "--updates", "2", *common]) == 0
    assert [r["update"] for r in progress_rows(out)] == ["1", "2"]
    # a plastic-only flag is refused for a peer, naming the flag
    assert main(["--algo", "ppo", "--fanout", "--out", str(tmp_path / "x"), *common]) == 2
    assert "--fanout" in capsys.readouterr().err
