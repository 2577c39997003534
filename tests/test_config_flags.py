"""Flags generated from config dataclasses (bpm_agents.config) and the one ``bpm`` command line."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from bpm_agents.config import Flags, opt, rename_keys

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Small:
    """A hand-made config with one field of each supported kind."""

    count: int = field(default=3, metadata=opt("how many"))
    rate: float | None = field(default=None, metadata=opt("a rate", default="per task: 0.1"))
    name: str = field(default="a", metadata=opt("a name", choices=("a", "b")))
    mode: Literal["fast", "slow"] = field(default="fast", metadata=opt("the mode"))
    on: bool = field(default=False, metadata=opt("a switch"))
    sizes: tuple[int, ...] = field(default=(4, 4), metadata=opt("layer sizes"))
    arch: list[int] | None = field(default=None, metadata=opt("an architecture"))
    options: dict[str, Any] = field(default_factory=dict, metadata=opt("JSON options"))
    scale: float | str = field(default=1.0, metadata=opt("a number or 1/N"))
    env_id: str = field(default="x", metadata=opt("renamed flag", flag="env", aliases=["old_env"]))
    secret: int = field(default=0, metadata=opt("not a flag", cli=False))


@dataclass(frozen=True)
class Bigger(Small):
    count: int = 5  # only a default: the help text comes from Small


def parser_and_flags(cls: type = Small, **kwargs: Any) -> tuple[argparse.ArgumentParser, Flags]:
    p = argparse.ArgumentParser(prog="t")
    flags = Flags()
    flags.add(p, cls, **kwargs)
    return p, flags


def test_types_and_explicit_flags():
    p, flags = parser_and_flags()
    args = p.parse_args([])
    assert flags.given(args) == {}  # nothing given: the dataclass's defaults apply
    argv = ["--count", "7", "--rate", "0.5", "--name", "b", "--mode", "slow", "--on", "--sizes", "8,9"]
    argv += ["--arch", "16", "--options", '{"k": [1, 2]}', "--scale", "1/N", "--env", "y"]
    given = flags.given(p.parse_args(argv))
    assert given == {
        "count": 7,
        "rate": 0.5,
        "name": "b",
        "mode": "slow",
        "on": True,
        "sizes": (8, 9),
        "arch": [16],
        "options": {"k": [1, 2]},
        "scale": "1/N",
        "env_id": "y",
    }
    assert Small(**flags.kwargs(Small, given)).sizes == (8, 9)
    assert flags.given(p.parse_args(["--no-on", "--scale", "0.5"])) == {"on": False, "scale": 0.5}
    assert "--secret" not in p.format_help()
    assert flags.flag_of("env_id") == "--env"


def test_help_texts_and_defaults():
    p, _ = parser_and_flags()
    text = " ".join(p.format_help().split())
    assert "how many (default: 3)" in text
    assert "a rate (default: per task: 0.1)" in text  # a None default says where it comes from
    assert "--on, --no-on a switch (default: off)" in text
    assert "{fast,slow}" in text and "--old-env" not in text  # choices; aliases are hidden
    assert "None" not in text
    p, _ = parser_and_flags(Bigger, defaults={"small": Small, "bigger": Bigger})
    text = " ".join(p.format_help().split())
    assert "how many (default: small 3; bigger 5)" in text  # help inherited, defaults per label
    assert "a name (default: a)" in text  # the same for both labels: one value


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--count", "x"], "argument --count: invalid int value: 'x'"),
        (["--rate", "fast"], "argument --rate: invalid float value: 'fast'"),
        (["--name", "c"], "argument --name: invalid choice: 'c'"),
        (["--mode", "medium"], "argument --mode: invalid choice: 'medium'"),
    ],
)
def test_bad_values_exit_2_naming_flag_and_value(capsys, argv, message):
    p, _ = parser_and_flags()
    with pytest.raises(SystemExit) as info:
        p.parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sizes", "8,x"], "--sizes must be comma-separated integers like '64,64', got '8,x'"),
        (["--options", "[1]"], "--options must be a JSON object, got '[1]'"),
        (["--options", "{no"], "--options must be a JSON object, got '{no'"),
    ],
)
def test_bad_json_and_lists_name_flag_and_value(argv, message):
    p, flags = parser_and_flags()
    with pytest.raises(ValueError) as info:
        flags.given(p.parse_args(argv))
    assert message in str(info.value)


def test_old_alias_sets_the_new_field_with_one_note(capsys):
    p, flags = parser_and_flags()
    assert flags.given(p.parse_args(["--old-env", "z"])) == {"env_id": "z"}
    assert capsys.readouterr().err == "t: note: --old-env is now --env\n"


def test_conflicts_name_flags_and_saved_values():
    p, flags = parser_and_flags()
    given = flags.given(p.parse_args(["--count", "3", "--sizes", "4,4", "--env", "y", "--arch", "8"]))
    saved = {"count": 3, "sizes": [4, 4], "env_id": "x", "arch": [16]}
    assert flags.conflicts(given, saved) == ["--arch [8] (saved: [16])", '--env y (saved: "x")']


def test_rename_keys_maps_old_names():
    assert rename_keys({"hebb_clip": 2.0, "lr": 1}, {"hebb_clip": "trace_clip"}) == {
        "trace_clip": 2.0,
        "lr": 1,
    }
    assert rename_keys({"hebb_clip": 2.0, "trace_clip": 3.0}, {"hebb_clip": "trace_clip"}) == {
        "trace_clip": 3.0
    }
    assert rename_keys("x", {}) == "x"


# ------------------------------------------------------------------ the real command lines
def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"flags_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bpm_help_lists_the_subcommands(capsys):
    from bpm_agents.cli import COMMANDS, main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"\n    {name}" in out, name
    assert main([]) == 2  # no command: the help, and a usage exit code
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_console_script_registered():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["scripts"]["bpm"] == "bpm_agents.cli:main"


@pytest.mark.parametrize("command", ["train", "train-lm", "evaluate", "experiment", "demo"])
def test_each_subcommand_has_help(capsys, command):
    from bpm_agents.cli import main

    assert main([command, "--help"]) == 0
    assert "usage: bpm " + command in capsys.readouterr().out


def test_train_help_is_generated_from_the_config_and_says_where_defaults_depend():
    from bpm_agents.cli import train_parser

    parser, flags = train_parser()
    text = " ".join(parser.format_help().split())
    assert "--gamma X discount (default: plastic-a2c 0.9; plastic-ppo 0.99)" in text
    assert "N recurrent units (default: per task and rule: cue 200; maze 100" in text
    assert "None" not in text
    assert flags.flag_of("unroll_impl") == "--impl" and flags.flag_of("rule") == "--plasticity"


def _parsed(parser_and_flags, argv):
    parser, flags = parser_and_flags
    return flags.given(parser.parse_args(argv))


def test_old_flag_spellings_still_parse_to_the_same_settings(capsys):
    from bpm_agents.cli import train_parser
    from bpm_agents.lm.cli import _train_parser as lm_train_parser
    from bpm_agents.sb3 import build_parser as sb3_parser

    plastic = ["--out", "x"]
    assert _parsed(train_parser(), [*plastic, "--unroll", "reference", "--ppo-epochs", "2"]) == _parsed(
        train_parser(), [*plastic, "--impl", "reference", "--n-epochs", "2"]
    )
    lm = ["--data", "d"]
    old = _parsed(lm_train_parser(), [*lm, "--hebb-clip", "2", "--clip", "1", "--init-scale", "0.2"])
    new = _parsed(lm_train_parser(), [*lm, "--trace-clip", "2", "--grad-clip", "1", "--weight-init", "0.2"])
    assert old == new == {"trace_clip": 2.0, "weight_init": 0.2, "clip": 1.0}
    peer = ["--algo", "ppo", "--out", "x"]
    old = _parsed(sb3_parser(), [*peer, "--ent-coef", "0.1", "--vf-coef", "0.2", "--max-grad-norm", "1"])
    new = _parsed(sb3_parser(), [*peer, "--entropy-coef", "0.1", "--value-coef", "0.2", "--grad-clip", "1"])
    assert old == new == {"ent_coef": 0.1, "vf_coef": 0.2, "max_grad_norm": 1.0}
    err = capsys.readouterr().err
    assert "--unroll is now --impl" in err and "--hebb-clip is now --trace-clip" in err


def test_shims_parse_as_the_subcommands(monkeypatch):
    """train.py / evaluate.py / experiment.py hand their argv to bpm_agents.cli.main unchanged."""
    import bpm_agents.cli as cli

    seen = []
    monkeypatch.setattr(cli, "main", lambda argv, prog=None: seen.append((argv, prog)) or 0)
    assert load_script("train").main(["--out", "x", "--lr", "1e-3"]) == 0
    assert load_script("train").main(["lm", "--data", "d"]) == 0
    assert load_script("evaluate").main(["runs/x", "--episodes", "3"]) == 0
    assert load_script("experiment").main(["status", "sweeps/x"]) == 0
    assert seen == [
        (["train", "--out", "x", "--lr", "1e-3"], "train.py"),
        (["train-lm", "--data", "d"], "train.py lm"),
        (["evaluate", "runs/x", "--episodes", "3"], "evaluate.py"),
        (["experiment", "status", "sweeps/x"], "experiment.py"),
    ]


def test_bad_flag_values_exit_2_naming_flag_and_value(tmp_path, capsys):
    from bpm_agents.cli import main

    out = str(tmp_path / "run")
    cases = [
        (
            ["train", "--out", out, "--hidden-size", "many"],
            "argument --hidden-size: invalid int value: 'many'",
        ),
        (["train", "--out", out, "--impl", "gpu"], "argument --impl: invalid choice: 'gpu'"),
        (["train", "--out", out, "--env-kwargs", "[1]"], "--env-kwargs must be a JSON object, got '[1]'"),
        (["train", "--out", out, "--threads", "0"], "--threads must be >= 1, got 0"),
        (["train", "--out", out, "--gae-lambda", "0.9"], "--gae-lambda: only for --algo plastic-ppo"),
        (["train-lm", "--data", out, "--trace-clip", "x"], "argument --trace-clip: invalid float value: 'x'"),
        (["train-lm", "--data", out, "--hidden-sizes", "2,x"], "--hidden-sizes must be comma-separated"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not Path(out).exists()


def test_lm_configs_load_old_field_names():
    from bpm_agents.lm.model import LMConfig

    new = LMConfig(variant="simple", trace_clip=2.0, weight_init=0.2)
    old = {k: v for k, v in new.to_dict().items() if k not in ("trace_clip", "weight_init")}
    old.update(hebb_clip=2.0, init_scale=0.2)  # a config.json / checkpoint of an older version
    assert LMConfig.from_dict(old) == new
    assert LMConfig.from_dict(new.to_dict()) == new


WORDS = "the cat sat on a mat".split()


def _corpus(folder: Path) -> Path:
    folder.mkdir()
    line = lambda k: " ".join(WORDS[(7 * k + j * (k % 3 + 1)) % 6] for j in range(5))  # noqa: E731
    for split, n in (("train", 40), ("valid", 6), ("test", 6)):
        (folder / f"{split}.txt").write_text("\n".join(line(k) for k in range(n)) + "\n")
    return folder


def test_lm_checkpoint_with_old_field_names_evaluates_and_resumes(tmp_path, capsys):
    """A run folder written before the renames: evaluate and resume read it, and a resume refuses
    a --trace-clip that differs from the saved hebb_clip."""
    from bpm_agents.cli import main
    from bpm_agents.lm.trainer import load_checkpoint, save_checkpoint

    corpus = _corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    flags = ["--data", str(corpus), "--variant", "simple", "--batch-size", "2", "--bptt", "5"]
    flags += ["--eval-batch-size", "2", "--no-progress", "--threads", "1", "--device", "cpu"]
    flags += ["--target-params", "3000", "--epochs", "1", "--out", str(out)]
    assert main(["train-lm", *flags]) == 0
    for name in ("checkpoint.pt", "best.pt"):
        payload = load_checkpoint(out / name)
        model = payload["model_config"]
        model["hebb_clip"], model["init_scale"] = model.pop("trace_clip"), model.pop("weight_init")
        save_checkpoint(out / name, payload)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(corpus), "--split", "valid", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["variant"] == "simple"
    assert main(["train-lm", *flags, "--resume", "--epochs", "2", "--trace-clip", "3"]) == 2
    assert "--trace-clip 3.0 (saved: 1.0)" in capsys.readouterr().err
    assert main(["train-lm", *flags, "--resume", "--epochs", "2", "--trace-clip", "1"]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["model"]["trace_clip"] == 1.0


def test_run_kind_detection(tmp_path):
    from bpm_agents.cli import run_kind

    def folder(name: str, meta: Any) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(meta))
        return d

    assert run_kind(folder("rl", {"algo": "plastic-ppo", "config": {}})) == "rl"
    assert run_kind(folder("sb3", {"algo": "ppo", "config": {}})) == "sb3"
    assert run_kind(folder("lm", {"model": {}, "train": {}})) == "lm"
    assert (
        run_kind(
            folder("tagged", {"schema": "backpropamine-gym/run/v1", "kind": "lm", "algo": "x", "config": {}})
        )
        == "lm"
    )
    assert run_kind(folder("other", [1])) is None
    assert run_kind(tmp_path / "nowhere") is None


def test_console_entry_sets_passive_omp_before_torch_loads(tmp_path):
    """What the console script imports first sets the policy while torch is still unloaded."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    code = "import sys, os, bpm_agents.cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.stdout.split() == ["PASSIVE", "False"], res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "bpm_agents", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0 and "commands:" in res.stdout, res.stderr
