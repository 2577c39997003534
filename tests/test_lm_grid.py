"""The PTB grid script's report: the choice per variant and the final comparison, on hand-made run folders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lm_grid", ROOT / "benchmarks" / "lm_grid.py")
assert spec is not None and spec.loader is not None
lm_grid = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lm_grid)

HEADER = "epoch,kind,step,lr,train_ppl,valid_ppl,test_ppl,l1_m_saturated,l2_m_saturated\n"


def fake_run(folder: Path, valid: list[float], test: float | None, params: int = 1000, sat: str = "") -> None:
    folder.mkdir(parents=True)
    rows = [f"{i + 1},epoch,{(i + 1) * 10},1,1,{v},,{sat},{sat}\n" for i, v in enumerate(valid)]
    (folder / "progress.csv").write_text(HEADER + "".join(rows))
    (folder / "config.json").write_text(json.dumps({"parameters": params}))
    if test is not None:
        (folder / "test.json").write_text(json.dumps({"test_ppl": test}))


def test_best_validation_comes_from_test_json_at_full_precision(tmp_path: Path):
    # progress.csv keeps 3 decimals; a finished run's test.json has the exact best validation
    fake_run(tmp_path / "run", [150.0, 110.015], 106.6)
    done = json.loads((tmp_path / "run" / "test.json").read_text())
    (tmp_path / "run" / "test.json").write_text(json.dumps({**done, "best_valid_ppl": 110.0146}))
    assert lm_grid.read_run(tmp_path / "run")["best_valid"] == 110.0146
    fake_run(tmp_path / "running", [150.0, 110.015], None)
    assert lm_grid.read_run(tmp_path / "running")["best_valid"] == 110.015


def test_point_name_is_a_folder_name():
    assert lm_grid.point_name("--l2 1e-4 --decay-start 4") == "l2=1e-4_decay-start=4"
    assert lm_grid.point_name("--tied") == "tied"
    assert lm_grid.point_name("") == "default"


def test_grid_chooses_the_lowest_mean_best_validation_per_variant(tmp_path: Path):
    a, b = "--l2 1e-6", "--l2 1e-4"
    # lstm: a has the lower best validation (min over epochs, not the last epoch) on the mean of 2 seeds
    fake_run(tmp_path / "lstm/l2=1e-6/seed0", [150, 120, 125], 118)
    fake_run(tmp_path / "lstm/l2=1e-6/seed1", [150, 124], 119)  # fewer epochs: the point is not comparable
    fake_run(tmp_path / "lstm/l2=1e-4/seed0", [150, 123], 121)
    fake_run(tmp_path / "lstm/l2=1e-4/seed1", [150, 125], 122)
    fake_run(tmp_path / "simple/l2=1e-6/seed0", [150, 130], 128, sat="0.9")
    fake_run(tmp_path / "simple/l2=1e-6/seed1", [150, 126], 127, sat="0.9")
    fake_run(tmp_path / "simple/l2=1e-4/seed0", [150, 129], 126, sat="0.5")  # seed 1 missing: not chosen
    text = lm_grid.report(tmp_path, {"lstm": [a, b], "simple": [a, b]}, [0, 1])
    chosen = json.loads((tmp_path / "grid.json").read_text())["chosen"]
    # lstm's a has seeds at 3 and 2 epochs, so only b (124 mean) counts
    assert chosen["lstm"] == {
        "point": "l2=1e-4",
        "flags": b,
        "mean_best_valid": 124.0,
        "epochs": 2,
        "complete": False,
    }
    assert chosen["simple"]["flags"] == a and chosen["simple"]["mean_best_valid"] == 128.0
    # neither grid is complete (a point not comparable, a seed missing): the choice is provisional only
    assert not chosen["lstm"]["complete"] and not chosen["simple"]["complete"]
    assert (
        "- simple: `--l2 1e-6` (mean best valid ppl 128.00 at 2 epochs; provisional: 1 of 2 points finished, 1 comparable"
        in text
    )
    fake_run(tmp_path / "simple/l2=1e-4/seed1", [150, 131], 129)
    lm_grid.report(tmp_path, {"lstm": [a, b], "simple": [a, b]}, [0, 1])
    chosen = json.loads((tmp_path / "grid.json").read_text())["chosen"]
    assert chosen["simple"]["complete"] and chosen["simple"]["flags"] == a and not chosen["lstm"]["complete"]
    # every point at the same epochs, but one still running (no test.json): not finished
    fake_run(tmp_path / "hebbian/l2=1e-6/seed0", [150, 127], 125)
    fake_run(tmp_path / "hebbian/l2=1e-4/seed0", [150, 126], None)
    running = lm_grid.report(tmp_path, {"hebbian": [a, b]}, [0])
    assert not json.loads((tmp_path / "grid.json").read_text())["chosen"]["hebbian"]["complete"]
    assert (
        "- hebbian: `--l2 1e-4` (mean best valid ppl 126.00 at 2 epochs; provisional: 1 of 2 points finished, 2 comparable)"
        in running
    )
    assert "| simple | `--l2 1e-4` | 1 | 0 | | | |" in text
    assert "l1 0.50, l2 0.50" in text


def test_chosen_runs_each_variant_at_its_own_point_and_reports_mean_and_sd(tmp_path: Path):
    grid_json = tmp_path / "grid" / "grid.json"
    grid_json.parent.mkdir()
    chosen = {
        "lstm": {"flags": "--l2 1e-4", "complete": True},
        "simple": {"flags": "--l2 1e-6", "complete": True},
    }
    grid_json.write_text(json.dumps({"chosen": chosen}))
    final = tmp_path / "final"
    fake_run(final / "lstm/l2=1e-4/seed0", [110], 104.0, params=4651600)
    fake_run(final / "lstm/l2=1e-4/seed1", [111], 106.0, params=4651600)
    fake_run(final / "simple/l2=1e-6/seed0", [112], 103.0, params=4651082)
    args = ["--data", "unused", "--out", str(final), "--variants", "lstm", "simple", "--chosen", str(grid_json),
            "--seeds", "0", "1", "--report-only"]  # fmt: skip
    assert lm_grid.main(args) == 0
    text = (final / "grid.md").read_text()
    # mean 105, sample sd sqrt(2) = 1.41; simple's seed 1 is not done
    assert "| `lstm` | 4,651,600 | 104.00 / 106.00 | 105.00 +- 1.41 | 104.26 |" in text
    assert "| `simple` | 4,651,082 | 103.00 / - | (not all seeds done) | 102.65 |" in text
    comparison = json.loads((final / "grid.json").read_text())["comparison"]
    assert comparison["lstm"]["test_ppl"] == [104.0, 106.0] and comparison["lstm"]["paper"] == 104.26


def test_chosen_without_a_finished_grid_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    grid_json = tmp_path / "grid.json"
    chosen = {
        "lstm": {"flags": "--l2 1e-4", "complete": True},
        "simple": {"flags": "--l2 1e-6", "complete": False},
    }
    grid_json.write_text(json.dumps({"chosen": chosen}))
    base = ["--data", "unused", "--out", str(tmp_path / "o"), "--report-only"]
    with pytest.raises(SystemExit) as e:
        lm_grid.main([*base, "--chosen", str(grid_json), "--variants", "lstm", "hebbian"])
    assert e.value.code == 2 and "no finished grid point for hebbian" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        lm_grid.main([*base, "--chosen", str(grid_json), "--variants", "lstm", "simple"])
    assert e.value.code == 2 and "the grid of simple is not finished" in capsys.readouterr().err
    assert lm_grid.main([*base, "--chosen", str(grid_json), "--variants", "lstm"]) == 0
    with pytest.raises(SystemExit) as e:
        lm_grid.main([*base, "--chosen", str(tmp_path / "missing.json")])
    assert e.value.code == 2 and "missing.json" in capsys.readouterr().err
