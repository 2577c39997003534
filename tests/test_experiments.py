"""Experiments: definitions, the sweep runner (inline, process pool, Ray), status and the report.

Runs are tiny (hidden size 8, batch 2, 20-step episodes, the reference unroll, a few updates).
Most runner tests use the inline backend (the same run_one, no process start-up, which costs
~10 s a process on a loaded 2-core machine); one end-to-end test drives the command line with
the process pool and kills it with SIGKILL, one runs the Ray backend on a local instance.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bpm_agents.a2c import A2CConfig
from bpm_agents.checkpoint import load_checkpoint
from bpm_agents.experiments import (
    BUILTIN,
    ExperimentError,
    SweepError,
    build_report,
    check_claim,
    experiment_from_dict,
    parse_seeds,
    resolve_run_config,
    run_sweep,
    sweep_status,
    write_report,
)
from bpm_agents.experiments.cli import main
from bpm_agents.experiments.definitions import PPO_TUNED, Claim
from bpm_agents.experiments.report import ConditionData, moving_average, table_marks
from bpm_agents.experiments.runner import ray_available, read_skips
from bpm_agents.ppo import PPOConfig
from bpm_agents.training import CSV_FIELDS, load_trainer, train
from bpm_envs.maze import build_walls

ROOT = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = {"batch_size": 2, "unroll_impl": "reference"}


def tiny_dict(name: str = "tiny") -> dict:
    return {
        "name": name,
        "env_id": "bpm/CueReward-v0",
        "env_kwargs": {"episode_length": 20},
        "conditions": [
            {"name": "none-N8", "rule": "none", "hidden_size": 8, "overrides": dict(TINY_OVERRIDES)},
            {"name": "hebbian-N8", "rule": "hebbian", "hidden_size": 8, "overrides": dict(TINY_OVERRIDES)},
        ],
        "protocols": {"paper": {}, "fast": {"lr": 1e-3}},
        "claims": [{"better": "hebbian-N8", "worse": "none-N8", "relation": ">", "significant": True}],
    }


@pytest.fixture(scope="module")
def tiny():
    return experiment_from_dict(tiny_dict())


def rewards(run_dir: Path) -> list[str]:
    """reward_mean column as written (strings: compared bit for bit)."""
    with (run_dir / "progress.csv").open(newline="") as f:
        return [r["reward_mean"] for r in csv.DictReader(f)]


def sweep(exp, out, updates, seeds=(0,), **kw):
    return run_sweep(
        exp,
        out,
        list(seeds),
        updates,
        backend="inline",
        stream=None,
        busy_window=0,
        checkpoint_every=kw.pop("checkpoint_every", 2),
        **kw,
    )


# ---------------------------------------------------------------- definitions


def test_builtin_experiments_are_the_papers():
    assert list(BUILTIN) == ["fig1", "a5", "fig2", "fig2-release"]
    cue = ["none-N200", "hebbian-N200", "simple-N200", "retroactive-N200"]
    assert [c.name for c in BUILTIN["fig1"].conditions] == cue
    assert [c.name for c in BUILTIN["a5"].conditions] == cue
    assert BUILTIN["a5"].env_kwargs == {"fixed_cues": True}
    assert [c.name for c in BUILTIN["fig2"].conditions] == [
        "simple-N100",
        "retroactive-N100",
        "hebbian-N101",
        "none-N139",
        "none-N100",
    ]
    assert {c.label for c in BUILTIN["fig2"].claims} == {
        "simple-N100 > hebbian-N101",
        "retroactive-N100 > hebbian-N101",
        "simple-N100 > none-N139",
    }
    # the original release's Fig. 2 maze: a 13x13 array, an 11x11 interior with 24 pillars
    release = BUILTIN["fig2-release"]
    assert release.env_kwargs == {"size": 11} and release.env_id == BUILTIN["fig2"].env_id
    assert release.conditions == BUILTIN["fig2"].conditions and release.claims == BUILTIN["fig2"].claims
    walls = build_walls(release.env_kwargs["size"])
    assert walls.shape == (13, 13) and int(walls[1:-1, 1:-1].sum()) == 24
    assert release.levels == {"random walk": 5.367, "oracle": 269.53}
    assert BUILTIN["fig2"].levels == {"random walk": 7.747, "oracle": 324.42}
    for exp in BUILTIN.values():
        assert exp.protocols == {"paper": {}, "ppo": {"algo": "plastic-ppo"}, "ppo-tuned": PPO_TUNED}
        assert experiment_from_dict(json.loads(json.dumps(exp.to_dict()))) == exp


@pytest.mark.parametrize("protocol", ["ppo", "ppo-tuned"])
def test_ppo_protocols_give_every_condition_the_same_ppo_settings(protocol):
    from bpm_agents.ppo import PPOConfig

    for exp in BUILTIN.values():
        configs = [resolve_run_config(exp, c.name, protocol, seed=1) for c in exp.conditions]
        assert all(type(cfg) is PPOConfig for cfg in configs)
        learner = {k: v for k, v in configs[0].to_dict().items() if k not in ("rule", "hidden_size")}
        for cfg, cond in zip(configs, exp.conditions):
            assert (cfg.rule, cfg.hidden_size) == (cond.rule, cond.hidden_size)
            assert {k: v for k, v in cfg.to_dict().items() if k not in ("rule", "hidden_size")} == learner
        default = PPOConfig(env_id=exp.env_id, rule="simple", env_kwargs=exp.env_kwargs, seed=1).resolve()
        assert (configs[0].lr, configs[0].gamma) == (default.lr, default.gamma)
        if protocol == "ppo-tuned":
            tuned = {k: getattr(configs[0], k) for k in PPO_TUNED if k != "algo"}
            assert tuned == {k: v for k, v in PPO_TUNED.items() if k != "algo"}
            assert configs[0].minibatch_unit == "steps" and configs[0].detach_value


def test_a_ppo_protocol_sweep_writes_plastic_ppo_folders(tmp_path):
    d = tiny_dict("tinyppo")
    # PPO's own fields are allowed (checked against PPOConfig) in a plastic-ppo protocol
    d["protocols"] = {"ppo": {"algo": "plastic-ppo", "n_epochs": 2, "n_minibatches": 1}}
    exp = experiment_from_dict(d)
    out = tmp_path / "sweep"
    res = run_sweep(exp, out, [0], 2, protocol="ppo", backend="inline", stream=None, busy_window=0)
    assert sorted(o["status"] for o in res.outcomes) == ["done", "done"]
    for cond in ("none-N8", "hebbian-N8"):
        run_dir = out / cond / "seed0"
        assert json.loads((run_dir / "config.json").read_text())["algo"] == "plastic-ppo"
        assert type(load_trainer(run_dir)).__name__ == "PlasticPPOTrainer"
    res = run_sweep(exp, out, [0], 2, protocol="ppo", backend="inline", stream=None, busy_window=0)
    assert [o["status"] for o in res.outcomes] == ["finished", "finished"]
    # the paper protocol's A2C run of the same condition cannot reuse these folders
    d["protocols"] = {"paper": {}}
    with pytest.raises(SweepError, match="holds a 'plastic-ppo' run, not a 'plastic-a2c' run"):
        run_sweep(experiment_from_dict(d), out, [0], 2, backend="inline", stream=None, busy_window=0)


def test_conditions_option_runs_a_subset_and_names_an_unknown_one(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    res = sweep(tiny, out, 2, conditions=["hebbian-N8"])
    assert [(o["condition"], o["status"]) for o in res.outcomes] == [("hebbian-N8", "done")]
    assert not (out / "none-N8").exists()
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_dict()))
    args = ["run", str(path), "--seeds", "0", "--updates", "2", "--out", str(out), "--backend", "inline"]
    assert main([*args, "--conditions", "hebbian-N8,nope"]) == 2
    err = capsys.readouterr().err
    assert "has no condition 'nope'; conditions: none-N8, hebbian-N8" in err and "Traceback" not in err


def test_a_protocol_with_an_unknown_algo_or_a_field_of_another_algo_is_refused():
    d = tiny_dict()
    d["protocols"] = {"x": {"algo": "sac"}}
    with pytest.raises(ExperimentError, match="algo 'sac' is not one of plastic-a2c, plastic-ppo"):
        experiment_from_dict(d)
    d["protocols"] = {"x": {"n_epochs": 2}}  # a PPO field in an A2C protocol
    with pytest.raises(ExperimentError, match="unknown A2CConfig field 'n_epochs'"):
        experiment_from_dict(d)


def test_paper_protocol_equals_the_train_py_config():
    # what `train.py --env E --plasticity R --hidden-size N --seed S` builds: folders it wrote are adopted
    for exp in BUILTIN.values():
        for cond in exp.conditions:
            cfg = resolve_run_config(exp, cond.name, "paper", seed=3)
            assert (
                cfg
                == A2CConfig(
                    env_id=exp.env_id,
                    rule=cond.rule,
                    hidden_size=cond.hidden_size,
                    env_kwargs=exp.env_kwargs,
                    seed=3,
                ).resolve()
            )


def test_levels_are_validated_and_shown_by_the_report(tmp_path):
    d = two_condition_experiment().to_dict()
    with pytest.raises(ExperimentError, match="field 'levels' must be an object of name -> finite number"):
        experiment_from_dict({**d, "levels": {"chance": "zero"}})
    exp = experiment_from_dict({**d, "levels": {"chance": 0.5}})
    assert exp.levels == {"chance": 0.5}
    for seed in range(2):
        fake_run(tmp_path, "simple-N8", seed, np.full(20, 1.0))
        fake_run(tmp_path, "hebbian-N8", seed, np.zeros(20))
    rep = build_report(tmp_path, exp, window=5)
    assert "reference levels (mean episode reward): chance 0.5" in rep.text()
    assert rep.to_json()["levels"] == {"chance": 0.5}


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.pop("env_id"), ["missing field 'env_id'"]),
        (lambda d: d.update(colour=1), ["unknown field", "colour"]),
        (lambda d: d.update(env_id="bpm/Nope-v0"), ["bpm/Nope-v0"]),
        (lambda d: d["conditions"][0].update(rule="oja"), ["none-N8", "'oja'", "hebbian"]),
        (lambda d: d["conditions"][0].update(hidden_size=0), ["hidden_size", "0"]),
        (lambda d: d["conditions"][0].update(name="a/b"), ["'a/b'"]),
        (lambda d: d["conditions"][1].update(name="none-N8"), ["used twice"]),
        (lambda d: d["conditions"][0]["overrides"].update(lr="fast"), ["lr", "'fast'"]),
        (lambda d: d["conditions"][0]["overrides"].update(seed=1), ["'seed'", "--seeds"]),
        (lambda d: d["conditions"][0]["overrides"].update(learning_rate=1), ["learning_rate", "allowed"]),
        (
            lambda d: d["conditions"][0]["overrides"].update(lr=-1.0),
            ["lr must be a finite number > 0", "-1.0"],
        ),
        (lambda d: d["conditions"][0]["overrides"].update(unroll_impl="gpu"), ["unroll_impl", "'gpu'"]),
        (lambda d: d["protocols"]["fast"].update(batch_size=4), ["both set", "batch_size"]),
        (lambda d: d["claims"][0].update(worse="rnn"), ["worse", "'rnn'"]),
        (lambda d: d["claims"][0].update(relation="<"), ["relation", "'<'"]),
        (lambda d: d.update(env_kwargs={"colour": 1}), ["env_kwargs", "colour"]),
    ],
)
def test_user_experiment_validation_names_the_bad_field(change, words):
    d = tiny_dict()
    change(d)
    with pytest.raises(ExperimentError) as err:
        experiment_from_dict(d, source="my.json")
    for w in words:
        assert w in str(err.value)


def test_cli_bad_experiment_file_exit_2_without_traceback(tmp_path, capsys):
    path = tmp_path / "bad.json"
    d = tiny_dict()
    d["conditions"][0]["rule"] = "oja"
    path.write_text(json.dumps(d))
    assert main(["run", str(path), "--updates", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "rule 'oja'" in err and "Traceback" not in err
    (tmp_path / "broken.json").write_text("{")
    assert main(["run", str(tmp_path / "broken.json"), "--updates", "2", "--out", str(tmp_path / "o")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main(["run", "fig9", "--updates", "2", "--out", str(tmp_path / "o")]) == 2
    assert "unknown experiment 'fig9'" in capsys.readouterr().err
    assert main(["run", "fig2", "--seeds", "3-1", "--updates", "2", "--out", str(tmp_path / "o")]) == 2
    assert "bad seed list '3-1'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_parse_seeds():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("3,0,7-8,3") == [0, 3, 7, 8]
    for bad in ("", "a", "-1", "2-", "1,,2"):
        with pytest.raises(SweepError):
            parse_seeds(bad)


# ---------------------------------------------------------------- the runner


def test_sweep_writes_ordinary_run_folders_resumes_and_skips(tiny, tmp_path):
    out = tmp_path / "sweep"
    res = sweep(tiny, out, 3, seeds=(0, 1))
    assert sorted(o["status"] for o in res.outcomes) == ["done"] * 4 and res.exit_code == 0
    for cond in ("none-N8", "hebbian-N8"):
        for seed in (0, 1):
            run_dir = out / cond / f"seed{seed}"
            trainer = load_trainer(run_dir)  # an ordinary run folder
            assert trainer.updates_done == 3
            assert trainer.config == resolve_run_config(tiny, cond, "paper", seed)
            assert len(rewards(run_dir)) == 3
    # continue to 6: equals a straight 6-update run bit for bit
    res = sweep(tiny, out, 6, seeds=(0, 1))
    assert sorted(o["status"] for o in res.outcomes) == ["done"] * 4
    straight = tmp_path / "straight"
    train(resolve_run_config(tiny, "hebbian-N8", "paper", 1), straight, 6, progress=False, tensorboard=False)
    assert rewards(out / "hebbian-N8" / "seed1") == rewards(straight)
    assert len(set(rewards(straight))) > 1  # the rewards do change from update to update
    # again: nothing to do, nothing touched
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "sweep.json"}
    res = sweep(tiny, out, 6, seeds=(0, 1))
    assert [o["status"] for o in res.outcomes] == ["finished"] * 4
    assert stamp == {p: p.stat().st_mtime_ns for p in stamp}
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["protocol"] == "paper" and manifest["targets"]["none-N8/seed1"] == 6


def test_sweep_adopts_a_train_py_folder_and_refuses_a_different_config(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    cfg = resolve_run_config(tiny, "none-N8", "paper", 0)
    train(cfg, out / "none-N8" / "seed0", 2, checkpoint_every=1, progress=False, tensorboard=False)
    res = sweep(tiny, out, 4, seeds=(0,))
    assert {(o["condition"], o["status"], o["updates_done"]) for o in res.outcomes} == {
        ("none-N8", "done", 4),
        ("hebbian-N8", "done", 4),
    }
    straight = tmp_path / "straight"
    train(cfg, straight, 4, progress=False, tensorboard=False)
    assert rewards(out / "none-N8" / "seed0") == rewards(straight)

    # a folder with another protocol's config: the whole sweep is refused, nothing started
    other = tmp_path / "other"
    train(
        resolve_run_config(tiny, "hebbian-N8", "fast", 0),
        other / "hebbian-N8" / "seed0",
        1,
        progress=False,
        tensorboard=False,
    )
    with pytest.raises(SweepError) as err:
        sweep(tiny, other, 4, seeds=(0,))
    assert str(other / "hebbian-N8" / "seed0") in str(err.value) and "lr: folder=0.001" in str(err.value)
    assert not (other / "none-N8").exists() and not (other / "sweep.json").exists()
    exp_file = tmp_path / "tiny.json"
    exp_file.write_text(json.dumps(tiny_dict()))
    assert main(["run", str(exp_file), "--seeds", "0", "--updates", "4", "--out", str(other)]) == 2
    msg = capsys.readouterr().err
    assert "differing fields: lr" in msg and "Traceback" not in msg
    # the same folder under its own protocol is fine, but one folder holds one protocol
    assert (
        main(
            [
                "run",
                str(exp_file),
                "--seeds",
                "0",
                "--updates",
                "1",
                "--protocol",
                "fast",
                "--backend",
                "inline",
                "--out",
                str(other),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "run",
                str(exp_file),
                "--seeds",
                "0",
                "--updates",
                "1",
                "--out",
                str(out),
                "--protocol",
                "fast",
                "--dry-run",
            ]
        )
        == 2
    )
    assert "differing fields" in capsys.readouterr().err


def test_a_folder_older_than_an_option_resumes_as_its_default(tmp_path):
    # a run folder written before weight_decay existed ran without decay: it resumes under a
    # protocol that leaves weight_decay at its default, and is refused by one that sets it
    exp = experiment_from_dict({**tiny_dict(), "protocols": {"paper": {}, "wd": {"weight_decay": 0.1}}})
    out = tmp_path / "old"
    assert sorted(o["status"] for o in sweep(exp, out, 2).outcomes) == ["done"] * 2
    run_dir = out / "hebbian-N8" / "seed0"
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["config"].pop("weight_decay") == 0.0
    (run_dir / "config.json").write_text(json.dumps(meta))
    res = sweep(exp, out, 4)
    assert sorted(o["status"] for o in res.outcomes) == ["done"] * 2
    assert load_trainer(run_dir).updates_done == 4
    with pytest.raises(SweepError, match=r"differing fields: weight_decay: folder=0\.0, experiment=0\.1"):
        sweep(exp, out, 6, protocol="wd")


def test_progress_line_and_a_folder_another_process_is_training(tiny, tmp_path):
    import io
    import threading

    out = tmp_path / "sweep"
    stream = io.StringIO()
    run_sweep(tiny, out, [0], 3, backend="inline", stream=stream, progress_every=1e-9, busy_window=0)
    text = stream.getvalue()
    assert "2 runs in" in text and "2 new, 0 to resume, 0 finished" in text
    assert "runs 2/2 finished | updates 6/6 (100.0%)" in text.splitlines()[-1]
    # a train.py still writing one folder (its progress.csv keeps changing): left alone, reported
    progress = out / "none-N8" / "seed0" / "progress.csv"
    before = progress.read_bytes()
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            os.utime(progress)
            time.sleep(0.1)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        res = run_sweep(tiny, out, [0], 5, backend="inline", stream=None, busy_window=0.5)
    finally:
        stop.set()
        thread.join()
    status = {o["condition"]: o["status"] for o in res.outcomes}
    assert status == {"none-N8": "busy", "hebbian-N8": "done"} and res.exit_code == 1
    assert progress.read_bytes() == before
    assert (
        "another process"
        in json.loads((out / "sweep.json").read_text())["failures"]["none-N8/seed0"]["message"]
    )
    assert {r.condition: r.state for r in sweep_status(out)}["none-N8"] == "failed (busy)"


def test_status_table(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    sweep(tiny, out, 3, seeds=(0,))
    sweep(tiny, out, 5, seeds=(1,))
    rows = sweep_status(out)
    got = {(r.condition, r.seed): (r.updates_logged, r.updates_saved, r.target, r.state) for r in rows}
    assert got == {
        ("none-N8", 0): (3, 3, 3, "done"),
        ("hebbian-N8", 0): (3, 3, 3, "done"),
        ("none-N8", 1): (5, 5, 5, "done"),
        ("hebbian-N8", 1): (5, 5, 5, "done"),
    }
    assert [r.condition for r in rows][:2] == ["none-N8", "none-N8"]  # the experiment's order
    r = next(r for r in rows if (r.condition, r.seed) == ("hebbian-N8", 1))
    assert r.recent_reward == pytest.approx(
        np.mean([float(x) for x in rewards(out / "hebbian-N8" / "seed1")])
    )
    assert {r.state for r in sweep_status(out, target=5) if r.seed == 0} == {"stopped"}
    exp_file = tmp_path / "tiny.json"
    exp_file.write_text(json.dumps(tiny_dict()))
    assert main(["status", str(out), "--experiment", str(exp_file), "--seeds", "0-2", "--json"]) == 0
    listed = {(r["condition"], r["seed"]): r["state"] for r in json.loads(capsys.readouterr().out)}
    assert len(listed) == 6 and listed[("none-N8", 2)] == "pending" and listed[("none-N8", 1)] == "done"
    with (out / "hebbian-N8" / "seed1" / "progress.csv").open("a") as f:
        f.write("6,12,240,0.5,1.0,0.1")  # half a row, as while a run writes it: not counted
    again = next(r for r in sweep_status(out) if (r.condition, r.seed) == ("hebbian-N8", 1))
    assert again.recent_reward == r.recent_reward and again.updates_logged == 5
    with (out / "hebbian-N8" / "seed1" / "progress.csv").open("a") as f:
        f.write("\n7,14,280" + ",0.5" * (len(CSV_FIELDS) - 4))  # all but the last column
    again = next(r for r in sweep_status(out) if (r.condition, r.seed) == ("hebbian-N8", 1))
    assert again.recent_reward == r.recent_reward and again.updates_logged == 5
    (out / "none-N8" / "seed7").mkdir()  # an empty folder is not a run
    assert main(["status", str(out), "--window", "2"]) == 0
    text = capsys.readouterr().out
    assert "last-2 reward" in text and "hebbian-N8  1     5/5" in text and "4 runs: 4 done" in text
    assert main(["status", str(tmp_path / "nope")]) == 2


def test_status_shows_the_training_time_summed_over_sessions(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    sweep(tiny, out, 3)
    first = {r.condition: r.train_seconds for r in sweep_status(out)}
    sweep(tiny, out, 5)  # a second session: the clock goes on from the first one's
    walls = {
        c: [float(r["wall_time"]) for r in csv.DictReader((out / c / "seed0" / "progress.csv").open())]
        for c in ("none-N8", "hebbian-N8")
    }
    for r in sweep_status(out):
        assert r.train_seconds == walls[r.condition][-1] and len(walls[r.condition]) == 5
        assert walls[r.condition] == sorted(walls[r.condition])
        assert r.train_seconds > first[r.condition] == walls[r.condition][2]
    # the column in hours and minutes: 1 h 2 min 5 s of training, then half a row being written
    progress = out / "none-N8" / "seed0" / "progress.csv"
    rows = list(csv.DictReader(progress.open()))
    rows[-1]["wall_time"] = "3725.0"
    with progress.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        f.write("6,12,")
    assert main(["status", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    col = table[0].index("train time")
    assert table[1].startswith("none-N8") and table[1][col:].split()[0] == "1h02m"
    assert main(["status", str(out), "--json"]) == 0
    listed = {r["condition"]: r["train_seconds"] for r in json.loads(capsys.readouterr().out)}
    assert listed["none-N8"] == 3725.0


def test_cli_kill9_loses_at_most_one_interval_and_the_rerun_continues(tmp_path):
    """The local process pool end to end: SIGKILL the runner; its workers notice, save and exit;
    the same sweep then continues from the checkpoints."""
    exp_file = tmp_path / "tiny.json"
    exp_file.write_text(json.dumps(tiny_dict()))
    out = tmp_path / "sweep"
    args = [
        "run",
        str(exp_file),
        "--seeds",
        "0",
        "--updates",
        "3000",
        "--workers",
        "2",
        "--checkpoint-every",
        "3",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDL_VIDEODRIVER": "dummy"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "experiment.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    runs = [out / "none-N8" / "seed0", out / "hebbian-N8" / "seed0"]
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not all(
            len(rewards(r)) >= 4 if (r / "progress.csv").exists() else False for r in runs
        ):
            time.sleep(0.3)
        assert all(len(rewards(r)) >= 4 for r in runs), (
            proc.stderr.read1().decode() if proc.poll() else "too slow"
        )
        workers = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        proc.kill()  # SIGKILL: no handler runs in the runner
        proc.wait(10)
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(int(w)) for w in workers):
            time.sleep(0.2)
        assert not any(_alive(int(w)) for w in workers), "workers outlived their runner"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = {}
    for r in runs:
        logged = len(rewards(r))
        saved = load_checkpoint(r / "checkpoint.pt")["trainer"]["updates_done"]
        assert logged - 3 <= saved <= logged  # at most one checkpoint interval lost
        before[r] = (saved, rewards(r)[:saved])
    assert {s.state for s in sweep_status(out)} == {"stopped"}
    target = max(s for s, _ in before.values()) + 3
    assert main([*args[:4], "--updates", str(target), *args[6:], "--backend", "inline"]) == 0
    for r in runs:
        saved, kept = before[r]
        assert len(rewards(r)) == target and rewards(r)[:saved] == kept  # continued, not restarted
    straight = tmp_path / "straight"
    train(
        resolve_run_config(experiment_from_dict(tiny_dict()), "hebbian-N8", "paper", 0),
        straight,
        target,
        progress=False,
        tensorboard=False,
    )
    assert rewards(runs[1]) == rewards(straight)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) is not running
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not ray_available(), reason="Ray is not installed (pip install 'backpropamine-gym[ray]')")
@pytest.mark.timeout(900)  # a local Ray instance starts slowly on a loaded 2-core machine
def test_ray_backend_on_a_local_instance(tiny, tmp_path):
    out = tmp_path / "ray"
    # one Ray worker: each worker process imports torch (~10 s on a loaded 2-core machine)
    res = run_sweep(tiny, out, [0], 2, backend="ray", workers=1, stream=None, busy_window=0)
    assert sorted(o["status"] for o in res.outcomes) == ["done", "done"]
    inline = tmp_path / "inline"
    sweep(tiny, inline, 2)
    for cond in ("none-N8", "hebbian-N8"):
        assert load_trainer(out / cond / "seed0").updates_done == 2
        assert rewards(out / cond / "seed0") == rewards(inline / cond / "seed0")
    res = run_sweep(tiny, out, [0], 2, backend="ray", workers=1, stream=None)
    assert [o["status"] for o in res.outcomes] == ["finished", "finished"]  # no Ray started


def test_ray_missing_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("bpm_agents.experiments.runner.ray_available", lambda: False)
    assert main(["run", "fig2", "--updates", "2", "--backend", "ray", "--out", str(tmp_path / "o")]) == 2
    assert "pip install" in capsys.readouterr().err


# ---------------------------------------------------------------- the report


def fake_run(
    out: Path,
    cond: str,
    seed: int,
    rewards_: np.ndarray,
    batch_size: int = 30,
    skipped: list[int] | None = None,
    ppo: dict | None = None,
) -> None:
    """A run folder as the report reads it: config.json and progress.csv (``skipped``: the
    skipped_steps column; ``ppo``: PPOConfig options, for a plastic-ppo run)."""
    run_dir = out / cond / f"seed{seed}"
    run_dir.mkdir(parents=True)
    cls, algo = (PPOConfig, "plastic-ppo") if ppo is not None else (A2CConfig, "plastic-a2c")
    cfg = (
        cls(
            env_id="bpm/CueReward-v0",
            rule=cond.split("-")[0],
            hidden_size=8,
            batch_size=batch_size,
            seed=seed,
            **(ppo or {}),
        )
        .resolve()
        .to_dict()
    )
    (run_dir / "config.json").write_text(json.dumps({"algo": algo, "config": cfg}))
    with (run_dir / "progress.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for i, r in enumerate(rewards_, 1):
            n = skipped[i - 1] if skipped is not None else 0
            w.writerow(
                {k: 0 for k in CSV_FIELDS} | {"update": i, "reward_mean": float(r), "skipped_steps": n}
            )


def two_condition_experiment(relation=">", significant=True):
    d = {
        "name": "synthetic",
        "env_id": "bpm/CueReward-v0",
        "conditions": [
            {"name": "simple-N8", "rule": "simple", "hidden_size": 8},
            {"name": "hebbian-N8", "rule": "hebbian", "hidden_size": 8},
        ],
        "claims": [
            {"better": "simple-N8", "worse": "hebbian-N8", "relation": relation, "significant": significant},
            {"better": "hebbian-N8", "worse": "simple-N8", "relation": ">=", "significant": False},
        ],
    }
    return experiment_from_dict(d)


def test_moving_average_and_marks():
    np.testing.assert_allclose(moving_average(np.array([1, 2, 3, 4, 5.0]), 2), [1, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(moving_average(np.array([3, 1, 2.0]), 100), [3, 2, 2])
    assert table_marks(3000) == [500, 1000, 1500, 2000, 2500, 3000]
    assert table_marks(224) == [50, 100, 150, 200, 224]


def test_rank_sum_on_fully_separated_seeds_has_the_known_value():
    # 5 vs 5, every value of one side above the other: z = (40 - 27.5) / sqrt(5*5*11/12) = 2.6112
    a = ConditionData("a", [0, 1, 2, 3, 4], [np.full(3, 10.0 + i) for i in range(5)])
    b = ConditionData("b", [0, 1, 2, 3, 4], [np.full(3, float(i)) for i in range(5)])
    res = check_claim(Claim("a", "b", ">", True), a, b)
    assert res["final"]["statistic"] == pytest.approx(2.6112, abs=1e-4)
    assert res["final"]["p"] == pytest.approx(0.009023, abs=1e-5)
    assert res["verdict"] == "holds" and res["fraction_better_significant"] == 1.0
    assert check_claim(Claim("b", "a", ">", False), b, a)["verdict"] == "does not hold"
    assert check_claim(Claim("b", "a", ">=", False), b, a)["verdict"] == "does not hold"
    one = ConditionData("c", [0], [np.zeros(3)])
    assert check_claim(Claim("a", "c", ">", True), a, one)["verdict"] == "not testable"


def test_report_on_shifted_and_identical_synthetic_curves(tmp_path, capsys):
    rng = np.random.default_rng(0)
    shifted, same = tmp_path / "shifted", tmp_path / "same"
    for seed in range(5):
        fake_run(shifted, "simple-N8", seed, rng.normal(3.0, 2.0, 400))
        fake_run(shifted, "hebbian-N8", seed, rng.normal(0.0, 2.0, 400))
        fake_run(same, "simple-N8", seed, rng.normal(0.0, 2.0, 400))
        fake_run(same, "hebbian-N8", seed, rng.normal(0.0, 2.0, 400))
    exp = two_condition_experiment()
    rep = build_report(shifted, exp, window=50)
    main_claim, reverse = rep.claims
    assert main_claim["verdict"] == "holds" and main_claim["final"]["p"] < 0.05
    assert main_claim["fraction_better_significant"] > 0.9
    assert reverse["verdict"] == "does not hold"  # hebbian >= simple is contradicted
    rep = build_report(same, exp, window=50)
    main_claim, reverse = rep.claims
    assert main_claim["verdict"] == "does not hold" and main_claim["final"]["p"] > 0.05
    assert main_claim["fraction_p_below_alpha"] < 0.2 and reverse["verdict"] == "holds"
    table = rep.table()["simple-N8"]
    assert [t["update"] for t in table] == [100, 200, 300, 400] and table[-1]["n"] == 5

    # the command line writes the four files; the episodes axis uses the runs' batch size
    exp_file = tmp_path / "exp.json"
    exp_file.write_text(json.dumps(exp.to_dict()))
    assert (
        main(
            [
                "report",
                str(shifted),
                "--experiment",
                str(exp_file),
                "--window",
                "50",
                "--marks",
                "100,400",
                "--out",
                str(tmp_path / "rep" / "shifted"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "simple-N8 > hebbian-N8 (significant): HOLDS at this budget" in text and "400 (12,000)" in text
    data = json.loads((tmp_path / "rep" / "shifted.json").read_text())
    assert data["batch_size"] == 30 and len(data["claims"][0]["p_per_update"]) == 400
    assert data["conditions"]["simple-N8"]["seeds"] == [0, 1, 2, 3, 4]
    assert (tmp_path / "rep" / "shifted.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (tmp_path / "rep" / "shifted_curves.csv").open() as f:
        head = next(csv.reader(f))
    assert head[0] == "update" and len(head) == 11


def test_report_compares_unequal_runs_up_to_the_shortest(tmp_path):
    out = tmp_path / "s"
    for seed in range(3):
        fake_run(out, "simple-N8", seed, np.full(300 if seed else 120, 5.0 + seed))
        fake_run(out, "hebbian-N8", seed, np.full(300, float(seed)))
    rep = build_report(out, two_condition_experiment(significant=False), window=10)
    claim = rep.claims[0]
    assert claim["compared_updates"] == 120 and claim["limited_by_shortest"]
    assert claim["verdict"] == "holds"
    assert any("unequal lengths" in n for n in rep.notes)
    assert any("120-300 updates" in n for n in rep.notes)
    text = rep.text()
    assert "At update 120 (the shortest common run length)" in text
    write_report(rep, tmp_path / "r")  # the figure draws curves of unequal lengths
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_report_seeds_keeps_only_those_runs(tmp_path, capsys):
    # seed 2 is short (120 updates); with --seeds 0-1 the claim is compared over all 300
    out = tmp_path / "s"
    for seed in range(3):
        fake_run(out, "simple-N8", seed, np.full(300 if seed < 2 else 120, 5.0 + seed))
        fake_run(out, "hebbian-N8", seed, np.full(300, float(seed)))
    exp = two_condition_experiment(significant=False)
    rep = build_report(out, exp, window=10, seeds=[0, 1])
    assert rep.claims[0]["compared_updates"] == 300 and not rep.claims[0]["limited_by_shortest"]
    assert [c.seeds for c in rep.conditions] == [[0, 1], [0, 1]]
    assert rep.notes[0] == "seeds 0, 1 only"
    exp_file = tmp_path / "exp.json"
    exp_file.write_text(json.dumps(exp.to_dict()))
    args = ["report", str(out), "--experiment", str(exp_file), "--out", str(tmp_path / "r")]
    assert main([*args, "--seeds", "0-1"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["conditions"]["simple-N8"]["seeds"] == [0, 1]
    capsys.readouterr()
    assert main([*args, "--seeds", "7"]) == 2
    assert "holds no run folders of seeds 7" in capsys.readouterr().err
    assert main([*args, "--seeds", "1-0"]) == 2
    assert "bad seed list '1-0'" in capsys.readouterr().err


def test_status_and_report_count_the_skipped_gradient_steps_of_a_frozen_run(tmp_path, capsys):
    # plastic PPO with 2 epochs x 3 minibatches = 6 gradient steps per update; 10 updates logged:
    # none skipped for 4, then 1, 3, then every step of the last 4 (a frozen run)
    out = tmp_path / "s"
    frozen = [0, 0, 0, 0, 1, 3, 6, 6, 6, 6]
    ppo = {"n_epochs": 2, "n_minibatches": 3, "grad_skip": 1000.0}
    fake_run(out, "simple-N8", 0, np.zeros(10), batch_size=6, skipped=frozen, ppo=ppo)
    fake_run(out, "hebbian-N8", 0, np.zeros(10), batch_size=6, ppo=ppo)
    fake_run(out, "hebbian-N8", 1, np.zeros(10))  # plastic A2C: one step per update
    assert read_skips(out / "simple-N8" / "seed0", window=4) == (28, 60, 5, 24, 24)
    assert read_skips(out / "simple-N8" / "seed0", window=100) == (28, 60, 5, 28, 60)
    assert read_skips(out / "hebbian-N8" / "seed1", window=4) == (0, 10, None, 0, 4)
    old = out / "old" / "seed0"  # a log from before the column existed: unknown, not zero
    old.mkdir(parents=True)
    (old / "config.json").write_text((out / "hebbian-N8" / "seed1" / "config.json").read_text())
    (old / "progress.csv").write_text("update,reward_mean\n1,0.5\n")
    assert read_skips(old, window=4) is None
    rows = {(r.condition, r.seed): r.recent_skipped for r in sweep_status(out, window=4)}
    assert rows == {("simple-N8", 0): (24, 24), ("hebbian-N8", 0): (0, 24), ("hebbian-N8", 1): (0, 4),
                    ("old", 0): None}  # fmt: skip
    assert main(["status", str(out), "--window", "4"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "last-4 skipped" in table[0]
    assert [line.split()[5] for line in table[1:5]] == ["0/24", "0/4", "-", "24/24"]
    rep = build_report(out, two_condition_experiment(), window=4)
    skip_notes = [n for n in rep.notes if "skipped" in n]
    assert skip_notes == [
        "simple-N8 seed 0: 28 of 60 gradient steps skipped (norm above grad_skip 1000), the first at "
        "update 5; 24 of 24 in its last 4 updates"
    ]


def test_paired_signed_rank_and_the_smallest_reachable_p():
    # 5 seeds, better above worse in every seed: the exact two-sided signed-rank p is 2 / 2**5
    a = ConditionData("a", [0, 1, 2, 3, 4], [np.full(4, 10.0 + i) for i in range(5)])
    b = ConditionData("b", [0, 1, 2, 3, 4], [np.full(4, float(i)) for i in range(5)])
    res = check_claim(Claim("a", "b", ">", True), a, b)
    assert res["paired"]["p_final"] == pytest.approx(0.0625)
    assert res["paired"]["direction_final"] == 1 and res["paired"]["seeds"] == [0, 1, 2, 3, 4]
    assert res["smallest_p"]["signed_rank"] == pytest.approx(0.0625)
    assert res["smallest_p"]["rank_sum"] == pytest.approx(0.009023, abs=1e-5)  # the 5 vs 5 value above
    # 3 vs 3: the rank-sum test reaches 0.0495 only under complete separation; signed-rank 0.25
    low = check_claim(
        Claim("a", "b", ">", True), *(ConditionData(c.name, c.seeds[:3], c.curves[:3]) for c in (a, b))
    )["smallest_p"]
    assert low["rank_sum"] == pytest.approx(0.04953, abs=1e-5) and low["signed_rank"] == pytest.approx(0.25)
    # pairs by seed id, not by position: seed 4 of "a" has no partner and is left out
    c = ConditionData("c", [4, 3, 2, 1, 0], [np.full(4, float(i) - 1) for i in (4, 3, 2, 1, 0)])
    res = check_claim(Claim("b", "c", ">", False), b, c)
    assert res["paired"]["seeds"] == [0, 1, 2, 3, 4] and res["paired"]["direction_final"] == 1
    # identical curves: every difference is 0, p = 1 and no direction
    same = check_claim(Claim("a", "a", ">", False), a, a)["paired"]
    assert same["p_final"] == 1.0 and same["direction_final"] == 0


def test_significant_ranges_keep_every_update_and_its_direction(tmp_path):
    from bpm_agents.experiments.report import format_ranges, significant_ranges

    mask = np.zeros(20, bool)
    mask[[0, 4, 5, 6, 19]] = True
    assert significant_ranges(mask) == [(1, 1), (5, 7), (20, 20)]
    assert format_ranges(significant_ranges(mask)) == "1, 5-7, 20"
    assert format_ranges(significant_ranges(mask), limit=1) == "1 and 2 more runs"
    # 'a' above 'b' over updates 1-30, below over 61-90 (5 seeds each, no noise)
    up = np.r_[np.full(30, 5.0), np.zeros(30), np.full(30, -5.0)]
    for seed in range(5):
        fake_run(tmp_path, "simple-N8", seed, up + seed * 0.01)
        fake_run(tmp_path, "hebbian-N8", seed, np.zeros(90) + seed * 0.01)
    claim = build_report(tmp_path, two_condition_experiment(), window=1).claims[0]
    assert claim["better_significant_ranges"] == [(1, 30)]
    assert claim["worse_significant_ranges"] == [(61, 90)]
    assert claim["fraction_worse_significant"] == pytest.approx(30 / 90)


_WORKER_RACE = """
import multiprocessing as mp, os, signal, time
from bpm_agents.checkpoint import StopOnSignals
from bpm_agents.experiments import runner
ctx = mp.get_context("spawn")
stop, abort = ctx.Event(), ctx.Event()
runner._worker_init(stop, abort, os.getppid())
with StopOnSignals() as handler:
    # the main thread busy in one long C call: signals wait until it runs Python code again
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # pkill hits this worker ...
        stop.set()  # ... and the runner, which asks every worker to stop
        time.sleep(1.0)  # the watchdog (0.2 s poll) relays that stop as a SIGINT meanwhile
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        for _ in range(1000):
            pass
        print("stop requested" if handler.requested else "nothing requested")
    except KeyboardInterrupt:
        print("aborted")
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_worker_counts_its_own_sigterm_and_the_runners_stop_as_one_request():
    """The race behind `pkill -TERM` losing the final checkpoint: a worker's SIGTERM and the
    watchdog's relayed stop, handled together, used to count as two signals and abort the run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _WORKER_RACE], capture_output=True, text=True,
                         env=env, timeout=60)  # fmt: skip
    assert out.stdout.strip() == "stop requested", out.stderr


def test_same_budget_sigterm_stops_the_pool_and_starts_no_queued_run(tmp_path):
    """`pkill -TERM -f same_budget.py` signals the parent and its workers at once: the running run
    saves and stops, and the queued seeds never start (they used to, once per worker)."""
    out = tmp_path / "sb"
    args = ["--out", str(out), "--seeds", "0", "1", "2", "--tasks", "maze", "--learners", "plastic-a2c",
            "--budget-maze", str(6000 * 2000), "--workers", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDL_VIDEODRIVER": "dummy"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "same_budget.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    first = out / "maze" / "plastic-a2c" / "seed0"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and (not (first / "progress.csv").exists() or len(rewards(first)) < 30):
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.3)
        assert len(rewards(first)) >= 30, "too slow"
        workers = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        for pid in [proc.pid, *map(int, workers)]:
            os.kill(pid, signal.SIGTERM)
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    logged = len(rewards(first))
    assert 30 <= logged < 2000
    assert load_checkpoint(first / "checkpoint.pt")["trainer"]["updates_done"] == logged  # saved on stop
    for seed in (1, 2):
        assert not (out / "maze" / "plastic-a2c" / f"seed{seed}" / "progress.csv").exists()
