"""Issue 13, item 5: each input that used to crash or lose work, with its exit code and message.

Tiny runs (hidden 4-8, batch 2, 20-step episodes, the reference unroll), mostly through
``train.py``'s ``main(argv)`` in-process; signals are tested on real subprocesses.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bpm_agents.checkpoint import CheckpointError, DictConfig, load_checkpoint
from bpm_agents.training import CSV_FIELDS

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "SDL_VIDEODRIVER": "dummy",
    "MPLBACKEND": "Agg",
    "OMP_NUM_THREADS": "1",
    "PYGAME_HIDE_SUPPORT_PROMPT": "1",
}
QUIET = ["--no-progress", "--no-tensorboard", "--threads", "1"]
TINY = [
    "--batch-size",
    "2",
    "--hidden-size",
    "6",
    "--env-kwargs",
    json.dumps({"episode_length": 20}),
    "--unroll",
    "reference",
    *QUIET,
]
PEER = [
    "--algo",
    "a2c",
    "--n-envs",
    "2",
    "--n-steps",
    "5",
    "--net-arch",
    "8",
    "--env-kwargs",
    json.dumps({"episode_length": 20}),
    *QUIET,
]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"ui_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TRAIN = load_script("train").main


def train(argv: list) -> int:
    try:
        return TRAIN([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own refusals
        return int(exc.code)


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "progress.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ non-bpm environment ids
@pytest.mark.parametrize("algo", [[], ["--algo", "ppo"]])
def test_gymnasium_env_id_is_refused_up_front(tmp_path, capsys, algo):
    out = tmp_path / "run"
    assert train([*algo, "--env", "CartPole-v1", "--updates", "1", "--out", out, *QUIET]) == 2
    cap = capsys.readouterr()
    assert "'CartPole-v1' is a Gymnasium env, not a bpm/ task" in cap.err
    assert "bpm/CueReward-v0, bpm/PlasticMaze-v0" in cap.err
    assert cap.out == "" and not out.exists()  # no half run folder left behind


# ------------------------------------------------------------------ config.json of wrong types
BAD_CONFIGS = [
    ({"hidden_size": "two hundred"}, "'hidden_size' must be an integer or null, got \"two hundred\""),
    ({"hidden_size": 2.5}, "'hidden_size' must be an integer or null, got 2.5"),
    ({"lr": "0.001"}, "'lr' must be a number or null, got \"0.001\""),
    ({"gamma": None}, "'gamma' must be a number, got null"),
    ({"env_kwargs": "x"}, "'env_kwargs' must be a JSON object, got \"x\""),
    ("not a dict", 'must be a JSON object of settings, got "not a dict"'),
]


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory):
    """A plastic A2C and an SB3 A2C run folder at update 0 (copied by each test)."""
    base = tmp_path_factory.mktemp("saved")
    assert train(["--updates", "0", "--out", base / "plastic", *TINY]) == 0
    assert train([*PEER, "--updates", "0", "--out", base / "peer"]) == 0
    return base


def _with_config(src: Path, dst: Path, change) -> Path:
    import shutil

    shutil.copytree(src, dst)
    meta = json.loads((dst / "config.json").read_text())
    meta["config"] = change if not isinstance(change, dict) else {**meta["config"], **change}
    (dst / "config.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize("kind", ["plastic", "peer"])
@pytest.mark.parametrize("change,message", BAD_CONFIGS)
def test_config_json_of_wrong_type_names_field_and_value(saved_runs, tmp_path, capsys, kind, change, message):
    if kind == "peer" and isinstance(change, dict) and "lr" in change:
        change = {"learning_rate": change["lr"]}
        message = message.replace("'lr'", "'learning_rate'")
    if kind == "peer" and isinstance(change, dict) and "hidden_size" in change:
        change = {"n_envs": change["hidden_size"]}
        message = message.replace("'hidden_size' must be an integer or null", "'n_envs' must be an integer")
    run = _with_config(saved_runs / kind, tmp_path / "run", change)
    before = (run / "progress.csv").read_text()
    assert train(["--out", run, "--resume", "--updates", "1", *QUIET]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert str(run / "config.json") in err and "Traceback" not in err
    assert (run / "progress.csv").read_text() == before  # nothing touched


def test_every_config_class_checks_types():
    from bpm_agents.a2c import A2CConfig
    from bpm_agents.checkpoint import check_config_dict
    from bpm_agents.lm.model import LMConfig
    from bpm_agents.lm.trainer import TrainConfig
    from bpm_agents.sb3 import SB3Config

    assert issubclass(A2CConfig, DictConfig) and issubclass(SB3Config, DictConfig)
    assert A2CConfig.from_dict({"hidden_size": 7, "lr": 1}).hidden_size == 7  # ints are numbers
    with pytest.raises(ValueError, match="A2CConfig field 'fanout' must be true or false, got 1"):
        A2CConfig.from_dict({"fanout": 1})
    with pytest.raises(ValueError, match=r"'net_arch' must be a list of integers or null, got \[64, \"x\"\]"):
        SB3Config.from_dict({"net_arch": [64, "x"]})
    with pytest.raises(ValueError, match="TrainConfig field 'bptt' must be an integer, got 2.5"):
        check_config_dict(TrainConfig, {"bptt": 2.5})
    with pytest.raises(ValueError, match="LMConfig field 'hidden_sizes' must be a list of integers"):
        check_config_dict(LMConfig, {"hidden_sizes": ["200"]})
    check_config_dict(LMConfig, {"hidden_sizes": [200, 200], "tied": False})  # a saved config passes


# ------------------------------------------------------------------ learning rates
@pytest.mark.parametrize("lr", ["inf", "nan", "0", "-1e-3", "1e300"])
@pytest.mark.parametrize("algo", ["plastic", "peer"])
def test_non_finite_or_non_positive_lr_is_refused_before_training(tmp_path, capsys, lr, algo):
    out = tmp_path / "run"
    flags = TINY if algo == "plastic" else PEER
    assert train([*flags, f"--lr={lr}", "--updates", "2", "--out", out]) == 2
    err = capsys.readouterr().err
    name = "lr" if algo == "plastic" else "learning_rate"
    assert (
        f"{name} must be a finite number > 0 (at most 3.4e38, the float32 range), got {float(lr)!r}" in err
    ), err
    assert not out.exists()


@pytest.mark.parametrize("flag", ["weight-decay", "modulator-penalty"])
@pytest.mark.parametrize("wd", ["nan", "inf", "-0.1"])
def test_bad_weight_decay_or_modulator_penalty_is_refused_before_training(tmp_path, capsys, wd, flag):
    out = tmp_path / "run"
    assert train([*TINY, f"--{flag}={wd}", "--updates", "2", "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"{flag.replace('-', '_')} must be a finite number >= 0, got {float(wd)!r}" in err, err
    assert "Traceback" not in err and not out.exists()


# ------------------------------------------------------------------ corrupt checkpoints
class Foreign:
    """An object the weights-only loader refuses."""


def test_corrupt_checkpoint_message_says_what_is_wrong_not_weights_only_false(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"format": "x", "w": torch.ones(3)}, good)
    cases = {
        "junk.pt": (b"hello, not a checkpoint", "not a checkpoint (not a torch save file)"),
        "short.pt": (good.read_bytes()[:60], "truncated"),
        "empty.pt": (b"", "empty (truncated)"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
    evil = tmp_path / "evil.pt"
    torch.save({"obj": Foreign()}, evil)
    cases["evil.pt"] = (None, "contains objects other than tensors")
    from bpm_agents.lm.trainer import load_checkpoint as load_lm_checkpoint

    for name, (_, message) in cases.items():
        for load in (load_checkpoint, load_lm_checkpoint):
            with pytest.raises(CheckpointError) as info:
                load(tmp_path / name)
            text = str(info.value)
            assert message in text, text
            assert "weights_only" not in text and "trust the source" not in text, text


# ------------------------------------------------------------------ resume says what it does
def test_resume_reports_its_start_refuses_differing_flags_and_has_nothing_to_do(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(["--plasticity", "hebbian", "--updates", "2", "--out", out, *TINY]) == 0
    capsys.readouterr()
    saved = (out / "checkpoint.pt").read_bytes()

    assert (
        train(
            [
                "--out",
                out,
                "--resume",
                "--updates",
                "10",
                "--plasticity",
                "retroactive",
                "--lr",
                "0.001",
                "--hidden-size",
                "6",
                *QUIET,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        'these flags differ from it: --plasticity retroactive (saved: "hebbian"); '
        "--lr 0.001 (saved: 0.0001)" in err
    ), err
    assert "--hidden-size" not in err  # the same value as saved is accepted
    assert (out / "checkpoint.pt").read_bytes() == saved and len(rows(out)) == 2

    assert train(["--out", out, "--resume", "--updates", "1", *QUIET]) == 0
    cap = capsys.readouterr()
    assert f"resuming {out} from update 2" in cap.err
    assert cap.out == "nothing to do: run already has 2 updates (asked for --updates 1)\n"
    assert (out / "checkpoint.pt").read_bytes() == saved

    # the original command line plus --resume is accepted (same values) and continues
    assert train(["--plasticity", "hebbian", "--updates", "3", "--out", out, "--resume", *TINY]) == 0
    cap = capsys.readouterr()
    assert f"resuming {out} from update 2" in cap.err and cap.out.startswith("done: 3 updates")
    assert [r["update"] for r in rows(out)] == ["1", "2", "3"]


def test_peer_resume_reports_refuses_and_has_nothing_to_do(tmp_path, capsys):
    out = tmp_path / "peer"
    assert train([*PEER, "--updates", "2", "--out", out]) == 0
    capsys.readouterr()
    assert (
        train(
            [
                "--out",
                out,
                "--resume",
                "--updates",
                "5",
                "--lr",
                "0.5",
                "--n-steps",
                "5",
                "--net-arch",
                "16",
                *QUIET,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--lr 0.5 (saved: 0.0007); --net-arch [16] (saved: [8])" in err, err
    assert "--n-steps" not in err
    assert train(["--out", out, "--resume", "--updates", "2", *QUIET]) == 0
    cap = capsys.readouterr()
    assert f"resuming {out} from update 2" in cap.err
    assert cap.out.startswith("nothing to do: run already has 2 updates")


# ------------------------------------------------------------------ SB3 resume bit for bit
def _peer_rows(run_dir: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows(run_dir)]


def _peer_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoint.pt")["parameters"]["policy"]


@pytest.mark.parametrize("algo", ["a2c", "recurrent-ppo"])
def test_peer_two_updates_plus_resume_two_equal_four_straight(tmp_path, capsys, algo):
    """n_steps 7 with 20-step episodes: every checkpoint falls mid-episode."""
    flags = [*PEER[2:], "--algo", algo, "--n-steps", "7"]
    if algo == "recurrent-ppo":
        flags += ["--lstm-hidden-size", "4", "--minibatch-size", "7", "--n-epochs", "2"]
    assert train([*flags, "--updates", "4", "--out", tmp_path / "whole"]) == 0
    assert train([*flags, "--updates", "2", "--out", tmp_path / "part"]) == 0
    import shutil

    from bpm_agents.checkpoint import save_checkpoint

    shutil.copytree(tmp_path / "part", tmp_path / "old")  # the same, without the resume state
    saved = load_checkpoint(tmp_path / "old" / "checkpoint.pt")
    save_checkpoint(tmp_path / "old" / "checkpoint.pt", {**saved, "resume": None})
    assert train(["--out", tmp_path / "part", "--resume", "--updates", "4", *QUIET]) == 0
    whole, part = _peer_rows(tmp_path / "whole"), _peer_rows(tmp_path / "part")
    assert [r["update"] for r in part] == ["1", "2", "3", "4"]
    assert part == whole
    a, b = _peer_params(tmp_path / "whole"), _peer_params(tmp_path / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a checkpoint without the resume state still resumes, says so, and differs: the test can fail
    capsys.readouterr()
    assert train(["--out", tmp_path / "old", "--resume", "--updates", "4", *QUIET]) == 0
    assert "not bit for bit" in capsys.readouterr().err
    old = _peer_params(tmp_path / "old")
    assert not all(torch.equal(a[k], old[k]) for k in a)


# ------------------------------------------------------------------ SIGTERM saves like Ctrl-C
WORDS = "the cat sat on a mat".split()


def write_corpus(folder: Path, train_lines: int) -> Path:
    """A tiny corpus of 6 words; ``train_lines`` lines of 5 words = train_lines * 6 tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    line = lambda k: " ".join(WORDS[(7 * k + j * (k % 3 + 1)) % 6] for j in range(5))  # noqa: E731
    (folder / "train.txt").write_text("\n".join(line(k) for k in range(train_lines)) + "\n")
    (folder / "valid.txt").write_text("\n".join(line(k) for k in range(3, 9)) + "\n")
    (folder / "test.txt").write_text("\n".join(line(k) for k in range(1, 7)) + "\n")
    return folder


def lm_flags(corpus: Path) -> list:
    return [
        "lm",
        "--data",
        corpus,
        "--variant",
        "retroactive",
        "--batch-size",
        "2",
        "--bptt",
        "5",
        "--eval-batch-size",
        "2",
        "--no-progress",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--target-params",
        "3000",
        "--epochs",
        "1",
    ]


def lm_rows(run_dir: Path) -> list[list[str]]:
    """progress.csv rows without the timing columns."""
    with (run_dir / "progress.csv").open(newline="") as f:
        return [r[:7] for r in csv.reader(f)]


def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path, capsys):
    """Real runs in subprocesses (plastic A2C, an SB3 peer, an LM; started together to share the
    interpreter start-up time), each sent SIGTERM after its first logged update."""
    corpus = write_corpus(tmp_path / "corpus", 2000)  # 1200 steps an epoch: far from its end
    runs = {"plastic": tmp_path / "plastic", "peer": tmp_path / "peer", "lm": tmp_path / "lm"}
    argv = {
        "plastic": [*TINY, "--updates", "100000", "--checkpoint-every", "100000", "--out", runs["plastic"]],
        "peer": [*PEER, "--updates", "100000", "--checkpoint-every", "100000", "--out", runs["peer"]],
        "lm": [*lm_flags(corpus), "--valid-every", "5", "--out", runs["lm"]],
    }
    logged = {  # has the run logged its first update (LM: its first check row)?
        "plastic": lambda d: (d / "progress.csv").exists() and len(rows(d)) >= 1,
        "peer": lambda d: (d / "progress.csv").exists() and len(rows(d)) >= 1,
        "lm": lambda d: (d / "progress.csv").exists() and len(lm_rows(d)) >= 2,
    }
    procs = {
        k: subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *map(str, a)],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k, a in argv.items()
    }
    results = {}
    try:
        deadline = time.monotonic() + 90
        pending = set(procs)
        while pending and time.monotonic() < deadline:
            for k in list(pending):
                assert procs[k].poll() is None, (k, procs[k].communicate()[1])
                if logged[k](runs[k]):
                    procs[k].send_signal(signal.SIGTERM)
                    pending.discard(k)
            time.sleep(0.02)
        for k, p in procs.items():
            results[k] = p.communicate(timeout=60)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    for k, p in procs.items():
        stdout, stderr = results[k]
        assert p.returncode == 130, (k, stderr)
        assert stdout.startswith("interrupted, checkpoint saved"), (k, stdout)
        assert "Traceback" not in stderr, (k, stderr)

    n = load_checkpoint(runs["plastic"] / "checkpoint.pt")["trainer"]["updates_done"]
    assert 1 <= n < 100000 and len(rows(runs["plastic"])) == n  # advanced past update 0
    steps = load_checkpoint(runs["peer"] / "checkpoint.pt")["num_timesteps"]
    m = len(rows(runs["peer"]))
    assert m >= 1 and steps == m * 2 * 5
    from bpm_agents.lm.trainer import load_checkpoint as load_lm

    saved = load_lm(runs["lm"] / "checkpoint.pt")
    k = saved["step"]
    assert saved["epoch"] == 0 and saved["in_epoch"]["steps"] == k and 5 <= k < 1200
    assert "interrupted by SIGTERM" in results["lm"][1]

    capsys.readouterr()
    assert train(["--out", runs["plastic"], "--resume", "--updates", n + 1, *QUIET]) == 0
    assert train(["--out", runs["peer"], "--resume", "--updates", m + 1, *QUIET]) == 0
    assert train([*lm_flags(corpus), "--out", runs["lm"], "--resume", "--max-steps", k + 3]) == 0
    err = capsys.readouterr().err
    assert f"resuming {runs['plastic']} from update {n}" in err
    assert f"resuming {runs['peer']} from update {m}" in err
    assert f"resuming {runs['lm']} from step {k} (epoch 1, {k} steps into it" in err
    assert [int(r["update"]) for r in rows(runs["plastic"])] == list(range(1, n + 2))
    assert [int(r["update"]) for r in rows(runs["peer"])] == list(range(1, m + 2))
    after = load_lm(runs["lm"] / "checkpoint.pt")
    assert after["step"] == k + 3 and after["epoch"] == 1 and after["in_epoch"] is None


def test_lm_interrupted_mid_epoch_resumes_bit_for_bit(tmp_path, capsys):
    """In-process: SIGTERM lands after a check row; the resumed epoch equals an uninterrupted one."""
    import threading

    corpus = write_corpus(tmp_path / "corpus", 400)  # 240 steps
    flags = [*lm_flags(corpus), "--valid-every", "20"]
    assert train([*flags, "--out", tmp_path / "whole"]) == 0
    out = tmp_path / "part"

    def terminate_after_first_check():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (out / "progress.csv").exists() and len(lm_rows(out)) >= 2:
                os.kill(os.getpid(), signal.SIGTERM)  # handled in the main thread
                return
            time.sleep(0.001)

    watcher = threading.Thread(target=terminate_after_first_check, daemon=True)
    watcher.start()
    assert train([*flags, "--out", out]) == 130
    watcher.join()
    from bpm_agents.lm.trainer import load_checkpoint as load_lm

    k = load_lm(out / "checkpoint.pt")["in_epoch"]["steps"]
    assert 20 <= k < 240
    assert train([*flags, "--out", out, "--resume"]) == 0
    assert lm_rows(out) == lm_rows(tmp_path / "whole")
    a, b = load_lm(tmp_path / "whole" / "checkpoint.pt"), load_lm(out / "checkpoint.pt")
    assert a["step"] == b["step"] == 240 and a["valid_ppl"] == b["valid_ppl"]
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])
    assert (
        json.loads((out / "test.json").read_text())["test_ppl"]
        == json.loads((tmp_path / "whole" / "test.json").read_text())["test_ppl"]
    )


# ------------------------------------------------------------------ LM: huge and non-finite lr
def test_lm_huge_lr_prints_inf_perplexity_instead_of_crashing(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", 40)
    assert train([*lm_flags(corpus), "--lr", "1e6", "--epochs", "2", "--out", tmp_path / "run"]) == 0
    err = capsys.readouterr().err
    assert "train ppl inf" in err and "Traceback" not in err
    assert any(r[4] == "inf" for r in lm_rows(tmp_path / "run")[1:])  # train_ppl column


@pytest.mark.parametrize("lr", ["inf", "nan", "0", "-1", "1e300"])
def test_lm_bad_lr_is_refused_before_training(tmp_path, capsys, lr):
    corpus = write_corpus(tmp_path / "corpus", 40)
    assert train([*lm_flags(corpus), f"--lr={lr}", "--out", tmp_path / "run"]) == 2
    err = capsys.readouterr().err
    assert f"invalid training setting lr={float(lr)!r} (a finite number > 0, at most 3.4e38" in err
    assert not (tmp_path / "run").exists()


def test_lm_non_finite_loss_stops_with_exit_2_keeping_the_last_good_checkpoint(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", 40)
    out = tmp_path / "run"
    # from scratch: the loss is NaN within the first epoch, before any checkpoint
    assert train([*lm_flags(corpus), "--lr", "1e30", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "stopped: training loss is nan at step" in err and "no checkpoint had been saved yet" in err
    # a good epoch, then the run diverges in epoch 2 (its saved lr made huge)
    import shutil

    shutil.rmtree(out)
    assert train([*lm_flags(corpus), "--out", out]) == 0
    from bpm_agents.lm.trainer import load_checkpoint as load_lm
    from bpm_agents.lm.trainer import save_checkpoint as save_lm

    payload = load_lm(out / "checkpoint.pt")
    payload["train_config"]["lr"] = 1e30
    save_lm(out / "checkpoint.pt", payload)
    good = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert train([*lm_flags(corpus), "--out", out, "--resume", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"the last good checkpoint {out / 'checkpoint.pt'} is kept" in err and "Traceback" not in err
    assert (out / "checkpoint.pt").read_bytes() == good


# ------------------------------------------------------------------ progress.csv optional cells
@pytest.mark.parametrize(
    "rule,empty",
    [
        ("none", {"modulator_abs_mean", "eta", "eta_e"}),
        ("hebbian", {"modulator_abs_mean", "eta_e"}),
        ("simple", {"eta", "eta_e"}),  # M(t) is its rate
        ("retroactive", {"eta"}),
    ],
)  # eta_e is its rate
def test_progress_csv_leaves_cells_of_absent_parameters_empty(tmp_path, rule, empty):
    out = tmp_path / rule
    assert train(["--plasticity", rule, "--updates", "1", "--out", out, *TINY]) == 0
    text = (out / "progress.csv").read_text()
    assert "nan" not in text.lower()
    (row,) = rows(out)
    assert list(row) == CSV_FIELDS
    assert {k for k, v in row.items() if v == ""} == empty
    for k in ("modulator_abs_mean", "eta", "eta_e"):
        if k not in empty:
            assert math.isfinite(float(row[k]))
    for k in ("eta", "eta_e"):
        if k not in empty:
            assert abs(float(row[k]) - 0.1) < 0.01  # the cue task's initial rate, after one step


# ------------------------------------------------------------------ optional extras
def test_training_without_tensorboard_skips_it_with_one_line(tmp_path, capsys, monkeypatch):
    """The default install has no TensorBoard: train.py (TensorBoard on) still runs."""
    for name in list(sys.modules):
        if name == "tensorboard" or name.startswith(("tensorboard.", "torch.utils.tensorboard")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    flags = [a for a in TINY if a != "--no-tensorboard"]
    out = tmp_path / "run"
    assert train([*flags, "--updates", "2", "--out", out]) == 0
    err = capsys.readouterr().err
    assert (
        err.count(
            "tensorboard is not installed: no TensorBoard logs (pip install 'backpropamine-gym[tensorboard]')"
        )
        == 1
    )
    assert not (out / "tb").exists() and len(rows(out)) == 2


def test_peers_without_sb3_name_the_extra(tmp_path, capsys, monkeypatch):
    for name in list(sys.modules):  # as if never installed: no cached (sub)modules, bpm_agents.sb3.* too
        if name.startswith(("bpm_agents.sb3", "stable_baselines3", "sb3_contrib")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)
    assert train([*PEER, "--updates", "1", "--out", tmp_path / "run"]) == 2
    err = capsys.readouterr().err
    assert (
        "--algo a2c needs stable-baselines3, which is not installed; it is part of the 'peers' "
        "extra: pip install 'backpropamine-gym[peers]'" in err
    )
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_recurrent_ppo_without_sb3_contrib_names_the_extra(tmp_path, capsys, monkeypatch):
    for name in list(sys.modules):
        if name.startswith("sb3_contrib"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sb3_contrib", None)
    assert train([*PEER[2:], "--algo", "recurrent-ppo", "--updates", "1", "--out", tmp_path / "r"]) == 2
    assert (
        "--algo recurrent-ppo needs sb3-contrib, which is not installed; it is part of the "
        "'peers' extra" in capsys.readouterr().err
    )


def test_extras_declared_in_pyproject():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = meta["dependencies"]
    assert "gymnasium>=1.1" in deps
    assert not any(
        d.startswith(("stable-baselines3", "sb3-contrib", "tensorboard", "pygame", "matplotlib", "pillow"))
        for d in deps
    )
    extras = meta["optional-dependencies"]
    assert extras["peers"] == ["stable-baselines3>=2.6", "sb3-contrib>=2.6"]
    assert set(extras["all"]) == set(
        extras["peers"] + extras["tensorboard"] + extras["render"] + extras["ray"]
    )
    assert set(extras["dev"]) == set(extras["all"]) | {
        "pytest>=7",
        "pytest-timeout>=2",
        "ruff>=0.6",
        "mypy>=1.10",
    }
    pinned = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    names = {d.split(">")[0].split("=")[0].lower() for d in deps + extras["dev"]}
    assert names <= pinned, names - pinned


def test_lm_resume_refuses_flags_that_differ_from_the_saved_settings(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus", 40)
    out = tmp_path / "run"
    assert train([*lm_flags(corpus), "--out", out]) == 0
    saved = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert (
        train(
            [
                *lm_flags(corpus),
                "--out",
                out,
                "--resume",
                "--epochs",
                "2",
                "--lr",
                "0.5",
                "--bptt",
                "5",
                "--variant",
                "lstm",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        'these flags differ from them: --variant lstm (saved: "retroactive"); --lr 0.5 (saved: 1.0)' in err
    ), err
    assert "--bptt" not in err and (out / "checkpoint.pt").read_bytes() == saved
    # the original command plus --resume (same values) continues
    assert train([*lm_flags(corpus), "--out", out, "--resume", "--epochs", "2"]) == 0
    assert f"resuming {out} from step" in capsys.readouterr().err
