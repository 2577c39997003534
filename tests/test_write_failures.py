"""Issue 30: every path a command writes fails with one clean line and exit code 2, never a
traceback, and before the work starts; plus the smaller user-facing fixes of that issue.

A read-only filesystem and a folder without permission cannot be made here without root-only
mounts (and root ignores permissions), so those are simulated by making the write probe raise
the ``OSError`` the kernel would; a regular file in the way is real.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import warnings
from pathlib import Path

import pytest

from bpm_agents import checkpoint, cli
from bpm_agents.checkpoint import OutputError, writable_dir, writable_file

QUIET = ["--no-progress", "--no-tensorboard", "--threads", "1"]
TINY = ["--batch-size", "2", "--hidden-size", "6", "--env-kwargs", json.dumps({"episode_length": 20}),
        "--impl", "reference", *QUIET]  # fmt: skip


def bpm(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def refuse_writes(monkeypatch, err: int) -> None:
    """Make every write probe fail as a read-only filesystem (EROFS) or a locked folder (EACCES) would."""

    def mkstemp(*args, dir=None, **kwargs):
        raise OSError(err, os.strerror(err), str(dir))

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", mkstemp)


def assert_clean(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err  # one line
    for needle in needles:
        assert needle in err, err


@pytest.fixture()
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("a user's file\n")
    return path


@pytest.fixture()
def run_dir(tmp_path: Path, capsys) -> Path:
    out = tmp_path / "run"
    code, _, err = bpm(capsys, "train", "--updates", "0", "--out", out, *TINY)
    assert code == 0, err
    return out


# ------------------------------------------------------------------ the shared checks


def test_writable_dir_and_file_name_the_flag_the_path_and_the_reason(tmp_path: Path, a_file: Path) -> None:
    assert writable_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert (tmp_path / "new" / "deeper").is_dir()
    assert not list((tmp_path / "new" / "deeper").iterdir())  # the probe leaves nothing behind
    with pytest.raises(OutputError, match=rf"cannot write --out {a_file}: it is a file, not a folder"):
        writable_dir(a_file)
    with pytest.raises(OutputError, match=rf"--out {a_file}/sub: {a_file} is a file, not a folder"):
        writable_dir(a_file / "sub")
    with pytest.raises(OutputError, match=rf"--gif {tmp_path}: it is a folder, not a file"):
        writable_file(tmp_path, "--gif")
    with pytest.raises(OutputError, match=rf"--gif {a_file}/x.gif: {a_file} is a file"):
        writable_file(a_file / "x.gif", "--gif")
    assert writable_file(tmp_path / "a" / "x.gif", "--gif") == tmp_path / "a" / "x.gif"
    assert not (tmp_path / "a" / "x.gif").exists()  # the file itself is not created


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES])
def test_writable_dir_reports_read_only_and_permission(tmp_path: Path, monkeypatch, err: int) -> None:
    refuse_writes(monkeypatch, err)
    with pytest.raises(OutputError, match=os.strerror(err)):
        writable_dir(tmp_path / "out")
    with pytest.raises(OutputError, match=os.strerror(err)):
        writable_file(tmp_path / "x.gif", "--gif")


# ------------------------------------------------------------------ each command


def test_train_out_on_a_file_under_a_file_and_read_only(
    capsys, a_file: Path, tmp_path: Path, monkeypatch
) -> None:
    code, _, err = bpm(capsys, "train", "--updates", "1", "--out", a_file, *TINY)
    assert_clean(code, err, "bpm train: error:", str(a_file), "is a file, not a folder")
    assert a_file.read_text() == "a user's file\n"
    code, _, err = bpm(capsys, "train", "--updates", "1", "--out", a_file / "run", *TINY)
    assert_clean(code, err, "is a file, not a folder")
    refuse_writes(monkeypatch, errno.EROFS)
    code, _, err = bpm(capsys, "train", "--updates", "1", "--out", tmp_path / "ro", *TINY)
    assert_clean(code, err, "Read-only file system")


def test_train_resume_onto_a_folder_that_became_read_only(capsys, run_dir: Path, monkeypatch) -> None:
    refuse_writes(monkeypatch, errno.EACCES)
    code, _, err = bpm(capsys, "train", "--updates", "2", "--out", run_dir, "--resume", *QUIET)
    started, error = err.splitlines()
    assert started == f"resuming {run_dir} from update 0"
    assert_clean(code, error + "\n", "Permission denied", str(run_dir))


def test_a_write_failing_mid_run_is_one_line(capsys, tmp_path: Path, monkeypatch) -> None:
    from bpm_agents import runs

    def full(self, row):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    monkeypatch.setattr(runs.ProgressLog, "write", full)
    code, _, err = bpm(capsys, "train", "--updates", "2", "--out", tmp_path / "run", *TINY)
    assert_clean(code, err, "No space left on device", "progress.csv")


def test_evaluate_checks_gif_and_plot_before_evaluating(
    capsys, run_dir: Path, a_file: Path, monkeypatch
) -> None:
    from bpm_agents import evaluation

    def never(*args, **kwargs):
        raise AssertionError("the evaluation ran before the output was checked")

    monkeypatch.setattr(evaluation, "load_agent", never)
    code, _, err = bpm(capsys, "evaluate", run_dir, "--gif", a_file / "x.gif")
    assert_clean(code, err, "cannot write --gif", "is a file, not a folder")
    code, _, err = bpm(capsys, "evaluate", run_dir, "--plot-modulator", run_dir)
    assert_clean(code, err, "cannot write --plot-modulator", "it is a folder, not a file")
    refuse_writes(monkeypatch, errno.EROFS)
    code, _, err = bpm(capsys, "evaluate", run_dir, "--gif", run_dir / "x.gif")
    assert_clean(code, err, "cannot write --gif", "Read-only file system")


def test_demo_gif_is_checked_before_the_episodes(capsys, a_file: Path) -> None:
    code, out, err = bpm(capsys, "demo", "--gif", a_file / "demo.gif", "--steps", "3")
    assert_clean(code, err, "bpm demo: error:", "cannot write --gif", "is a file, not a folder")
    assert "episode" not in out  # nothing ran


def test_experiment_run_and_report_outputs(capsys, a_file: Path, tmp_path: Path) -> None:
    code, _, err = bpm(capsys, "experiment", "run", "fig2", "--seeds", "0", "--updates", "1", "--out", a_file)
    assert_clean(code, err, "bpm experiment run: error:", "cannot write --out", "is a file, not a folder")
    sweep = tmp_path / "sweep"
    (sweep / "simple-N100" / "seed0").mkdir(parents=True)
    code, _, err = bpm(capsys, "experiment", "report", sweep, "--out", a_file / "report")
    assert_clean(code, err, "bpm experiment report: error:", "cannot write --out", "is a file, not a folder")
    code, _, err = bpm(capsys, "experiment", "report", a_file)
    assert_clean(code, err, f"sweep folder {a_file} is a file, not a folder")


def test_train_lm_out_on_a_file_has_the_command_prefix(capsys, a_file: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "valid", "test"):
        (corpus / f"{split}.txt").write_text("a b c d e\nb c d e a\n" * 4)
    argv = ["train-lm", "--variant", "lstm", "--data", corpus, "--out", a_file, "--batch-size", "2",
            "--bptt", "3", "--no-progress", "--threads", "1", "--device", "cpu", "--target-params", "3000"]  # fmt: skip
    code, _, err = bpm(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err
    assert f"bpm train-lm: error: cannot write --out {a_file}: it is a file, not a folder" in err


def test_sb3_peer_out_on_a_file(capsys, a_file: Path) -> None:
    pytest.importorskip("stable_baselines3")
    peer = ["--algo", "a2c", "--n-envs", "2", "--n-steps", "5", "--net-arch", "8",
            "--env-kwargs", json.dumps({"episode_length": 20}), *QUIET]  # fmt: skip
    code, _, err = bpm(capsys, "train", "--updates", "1", "--out", a_file, *peer)
    assert_clean(code, err, "cannot write --out", "is a file, not a folder")


# ------------------------------------------------------------------ the smaller items


def test_files_of_a_run_follow_the_umask(tmp_path: Path, capsys) -> None:
    for mask, mode in ((0o022, 0o644), (0o077, 0o600)):
        old = os.umask(mask)
        try:
            out = tmp_path / f"run{mask:o}"
            code, _, err = bpm(capsys, "train", "--updates", "0", "--out", out, *TINY)
        finally:
            os.umask(old)
        assert code == 0, err
        for name in ("config.json", "checkpoint.pt", "progress.csv"):
            assert stat.S_IMODE((out / name).stat().st_mode) == mode, (name, oct(mask))


def test_zero_updates_says_so_instead_of_nan(capsys, tmp_path: Path) -> None:
    code, out, _ = bpm(capsys, "train", "--updates", "0", "--out", tmp_path / "run", *TINY)
    assert code == 0
    assert out.strip() == f"done: 0 updates, no episode finished in this call, run folder {tmp_path / 'run'}"
    assert "nan" not in out


def test_evaluate_on_a_regular_file_says_it_is_a_file(capsys, a_file: Path) -> None:
    code, _, err = bpm(capsys, "evaluate", a_file)
    assert_clean(code, err, f"run folder {a_file} is a file, not a folder")


def test_raw_pickle_checkpoint_gives_our_error_and_no_torch_warning(capsys, run_dir: Path) -> None:
    import pickle

    (run_dir / "checkpoint.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = bpm(capsys, "evaluate", run_dir)
    assert_clean(code, err, "is not a readable checkpoint", "not a torch save file")
    assert not [w for w in caught if "pickle protocol" in str(w.message)]


def test_unknown_env_option_lists_the_allowed_ones(capsys, tmp_path: Path) -> None:
    code, _, err = bpm(capsys, "train", "--env", "bpm/CueReward-v0", "--env-kwargs", '{"bogus": 1}',
                       "--updates", "1", "--out", tmp_path / "run", *QUIET)  # fmt: skip
    assert_clean(
        code,
        err,
        "unknown option 'bogus' of CueRewardTask; allowed: n_cues, cue_bits, episode_length, fixed_cues",
    )
    assert not (tmp_path / "run").exists()
    import gymnasium as gym

    with pytest.raises(TypeError, match="unknown options 'a', 'b' of MazeTask; allowed: size, reward"):
        gym.make("bpm/PlasticMaze-v0", a=1, b=2)


def test_demo_gif_caption_shows_the_episode_length(monkeypatch, tmp_path: Path, capsys) -> None:
    pytest.importorskip("pygame")
    from bpm_envs import demo

    texts: list[str] = []
    real = demo.caption_strip
    monkeypatch.setattr(demo, "caption_strip", lambda width, text: texts.append(text) or real(width, text))
    demo.run("bpm/PlasticMaze-v0", episodes=1, gif=str(tmp_path / "d.gif"), steps=3)
    assert texts[0] == "episode 1/1   step 0/3   reward so far +0"
    texts.clear()
    demo.run("bpm/CueReward-v0", episodes=1, gif=str(tmp_path / "c.gif"), steps=None)
    assert texts[-1].startswith("episode 1/1   step 120/120   ")
    capsys.readouterr()
