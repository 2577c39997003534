"""BPTT training, checkpoints and the ``train.py lm`` / ``evaluate.py lm`` command lines."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from bpm_agents.lm.cli import evaluate_main, main, train_main
from bpm_agents.lm.corpus import batchify
from bpm_agents.lm.model import LanguageModel, LMConfig
from bpm_agents.lm.trainer import (
    CheckpointError,
    TrainConfig,
    evaluate,
    load_checkpoint,
    save_checkpoint,
    train_epoch,
)

WORDS = "a b c d e f".split()


def cyclic_ids(n: int, vocab: int = 6, start: int = 0) -> torch.Tensor:
    return (torch.arange(n) + start) % vocab


@pytest.mark.parametrize("variant", ["lstm", "retroactive"])
def test_training_lowers_validation_perplexity_on_learnable_sequence(variant: str) -> None:
    torch.manual_seed(0)
    cfg = LMConfig(variant=variant, vocab_size=6, emb_size=8, hidden_sizes=(16,), weight_init=0.1)
    model = LanguageModel(cfg, torch.Generator().manual_seed(0))
    train, valid = cyclic_ids(4 * 2010), cyclic_ids(200, start=3)
    before = evaluate(model, valid, batch_size=2, bptt=10)[1]
    tc = TrainConfig(lr=0.5, batch_size=4, bptt=10, clip=5.0, l2=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=tc.lr)
    loss, steps, _ = train_epoch(model, batchify(train, 4), opt, tc, max_steps=200)
    after = evaluate(model, valid, batch_size=2, bptt=10)[1]
    assert steps == 200
    assert before == pytest.approx(6.0, rel=0.05)  # untrained: about uniform
    assert after < 1.5  # the next token is fully determined by the current one


def test_train_epoch_resets_state_at_start_and_carries_it_between_segments() -> None:
    cfg = LMConfig(variant="simple", vocab_size=6, emb_size=4, hidden_sizes=(5,), weight_init=0.5)
    model = LanguageModel(cfg, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.layers[0].synapses.fanout_bias.fill_(0.5)
    seen: list[tuple[float, float, bool]] = []
    forward = model.forward

    def spy(tokens, state):
        seen.append(
            (
                state[0].hebb.abs().sum().item(),
                state[0].hidden.abs().sum().item(),
                state[0].hebb.requires_grad,
            )
        )
        return forward(tokens, state)

    model.forward = spy  # type: ignore[method-assign]
    tc = TrainConfig(lr=0.1, batch_size=2, bptt=4, l2=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=tc.lr)
    streams = batchify(cyclic_ids(2 * 17), 2)  # 16 predictions per stream: 4 segments
    for _ in range(2):
        train_epoch(model, streams, opt, tc)
    assert len(seen) == 8
    for epoch_start in (0, 4):
        assert seen[epoch_start][:2] == (0.0, 0.0)
        for k in range(epoch_start + 1, epoch_start + 4):
            hebb, hidden, needs_grad = seen[k]
            assert hebb > 0 and hidden > 0 and not needs_grad  # carried, detached


def test_sum_time_loss_scales_the_gradient_by_segment_length() -> None:
    cfg = LMConfig(variant="lstm", vocab_size=6, emb_size=4, hidden_sizes=(5,))
    streams = batchify(cyclic_ids(2 * 7), 2)  # one segment of T = 6
    params = []
    for reduction, lr in (("sum_time", 0.01), ("mean", 0.06)):
        model = LanguageModel(cfg, torch.Generator().manual_seed(0))
        tc = TrainConfig(lr=lr, batch_size=2, bptt=6, clip=1e9, l2=0.0, loss_reduction=reduction)
        train_epoch(model, streams, torch.optim.SGD(model.parameters(), lr=lr), tc)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(params[0], params[1])


def test_lr_schedule_and_config_validation() -> None:
    tc = TrainConfig(lr=1.0, lr_decay=0.5, decay_start=3)
    assert [tc.lr_at(e) for e in (1, 2, 3, 4, 5)] == [1.0, 1.0, 0.5, 0.25, 0.125]
    with pytest.raises(ValueError, match="lr_decay=1.5"):
        TrainConfig(lr_decay=1.5)
    with pytest.raises(ValueError, match="loss_reduction='median'"):
        TrainConfig(loss_reduction="median")


def test_checkpoint_is_atomic_and_corruption_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"format": "bpm-lm-1", "x": torch.ones(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left
    assert load_checkpoint(path)["x"].tolist() == [1.0, 1.0]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)
    from bpm_agents.checkpoint import save_checkpoint as save_any

    save_any(path, {"kind": "rl", "something": 1})
    with pytest.raises(CheckpointError, match="not a language-model checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")


# --- command lines ------------------------------------------------------------------------------


@pytest.fixture()
def corpus_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    line = lambda k: " ".join(WORDS[(k + j) % 6] for j in range(5))  # noqa: E731
    (folder / "train.txt").write_text("\n".join(line(k) for k in range(40)) + "\n")
    (folder / "valid.txt").write_text("\n".join(line(k) for k in range(3, 9)) + "\n")
    (folder / "test.txt").write_text("\n".join(line(k) for k in range(1, 7)) + "\n")
    return folder


TINY = ["--batch-size", "2", "--bptt", "5", "--eval-batch-size", "2", "--no-progress", "--threads", "1",
        "--device", "cpu", "--target-params", "3000"]  # fmt: skip


def test_train_resume_and_evaluate_end_to_end(corpus_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["--variant", "retroactive", "--data", str(corpus_dir), "--out", str(out), *TINY]
    assert train_main([*args, "--epochs", "2", "--eval-test-each-epoch"]) == 0
    err = capsys.readouterr().err
    assert "parameters: target 3,000" in err and "retroactive hidden" in err
    rows = list(csv.DictReader(open(out / "progress.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(r["kind"] == "epoch" for r in rows)
    assert all(float(r["test_ppl"]) > 1 for r in rows)
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "lm" and config["command"][:2] == ["train.py", "lm"]
    assert config["config"]["model"]["variant"] == "retroactive" and config["parameters"] <= 3000
    summary = json.loads((out / "test.json").read_text())
    assert summary["best_valid_ppl"] == pytest.approx(min(float(r["valid_ppl"]) for r in rows), rel=1e-3)

    assert train_main([*args, "--epochs", "3", "--resume"]) == 0
    rows = list(csv.DictReader(open(out / "progress.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    steps_per_epoch = int(rows[0]["step"])
    assert int(rows[2]["step"]) == 3 * steps_per_epoch

    capsys.readouterr()
    assert evaluate_main([str(out), "--data", str(corpus_dir), "--split", "test", "--batch-size", "2",
                          "--bptt", "5", "--device", "cpu", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["perplexity"] == pytest.approx(
        json.loads((out / "test.json").read_text())["test_ppl"], rel=1e-5
    )
    assert result["variant"] == "retroactive" and result["split"] == "test"
    # the plain reference rules give the same perplexity as the fused step (the default here)
    assert evaluate_main([str(out), "--data", str(corpus_dir), "--split", "test", "--batch-size", "2",
                          "--bptt", "5", "--device", "cpu", "--json", "--impl", "reference"]) == 0  # fmt: skip
    reference = json.loads(capsys.readouterr().out)
    assert reference["perplexity"] == pytest.approx(result["perplexity"], rel=1e-5)

    # the module entry point dispatches the same functions
    assert main(["evaluate", str(out / "checkpoint.pt"), "--data", str(corpus_dir), "--split", "valid",
                 "--device", "cpu"]) == 0  # fmt: skip
    assert "retroactive valid perplexity" in capsys.readouterr().out


def test_max_steps_caps_the_run(corpus_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train_main(["--variant", "lstm", "--data", str(corpus_dir), "--out", str(out), "--epochs", "5",
                       "--max-steps", "3", *TINY]) == 0  # fmt: skip
    rows = list(csv.DictReader(open(out / "progress.csv")))
    assert [(r["epoch"], r["step"]) for r in rows] == [("1", "3")]


def test_a_folder_of_an_earlier_version_resumes_and_evaluates(
    corpus_dir: Path, tmp_path: Path, capsys
) -> None:
    """last.pt, log.csv and a config.json without the run schema (model / train at the top)."""
    import os

    out = tmp_path / "old"
    args = ["--variant", "simple", "--data", str(corpus_dir), "--out", str(out), *TINY]
    assert train_main([*args, "--epochs", "1"]) == 0
    os.replace(out / "checkpoint.pt", out / "last.pt")
    os.replace(out / "progress.csv", out / "log.csv")
    meta = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**meta["config"], "parameters": meta["parameters"]}))
    from bpm_agents.runs import run_kind

    assert run_kind(out) == "lm"
    assert train_main([*args, "--epochs", "2", "--resume"]) == 0
    assert "resuming" in capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "progress.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and not (out / "log.csv").exists()
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    assert evaluate_main([str(out), "--data", str(corpus_dir), "--split", "valid", "--batch-size", "2",
                          "--bptt", "5", "--device", "cpu"]) == 0  # fmt: skip


def _exit_and_error(fn, argv, capsys) -> tuple[int, str]:
    code = fn(argv)
    return code, capsys.readouterr().err


def test_cli_errors_exit_2_with_clear_message(corpus_dir: Path, tmp_path: Path, capsys) -> None:
    code, err = _exit_and_error(train_main, ["--data", str(tmp_path / "missing"), *TINY], capsys)
    assert code == 2 and "does not exist" in err and "Traceback" not in err

    code, err = _exit_and_error(train_main, ["--variant", "gru", "--data", str(corpus_dir)], capsys)
    assert code == 2 and "invalid choice: 'gru'" in err

    (corpus_dir / "test.txt").write_text("a b zebra\n")
    code, err = _exit_and_error(train_main, ["--data", str(corpus_dir), *TINY], capsys)
    assert code == 2 and "'zebra'" in err and "test.txt line 1" in err

    (corpus_dir / "test.txt").unlink()
    code, err = _exit_and_error(train_main, ["--data", str(corpus_dir), *TINY], capsys)
    assert code == 2 and "no test split" in err

    code, err = _exit_and_error(
        train_main, ["--data", str(corpus_dir), "--out", str(tmp_path / "r"), "--resume", *TINY], capsys
    )
    assert code == 2 and "--resume: no checkpoint" in err

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    code, err = _exit_and_error(
        evaluate_main, [str(bad), "--data", str(corpus_dir), "--split", "valid"], capsys
    )
    assert code == 2 and "not a checkpoint (not a torch save file)" in err and "Traceback" not in err

    code, err = _exit_and_error(main, ["fit"], capsys)
    assert code == 2 and "usage" in err


def test_untrained_model_perplexity_through_cli_is_near_vocab(
    corpus_dir: Path, tmp_path: Path, capsys
) -> None:
    """One SGD step with a tiny lr barely moves an almost-uniform model: ppl ~ vocabulary (7)."""
    out = tmp_path / "run"
    assert train_main(["--data", str(corpus_dir), "--out", str(out), "--max-steps", "1", "--lr", "1e-6",
                       "--init-scale", "1e-4", *TINY]) == 0  # fmt: skip
    capsys.readouterr()
    assert (
        evaluate_main([str(out), "--data", str(corpus_dir), "--split", "train", "--json", "--device", "cpu"])
        == 0
    )
    ppl = json.loads(capsys.readouterr().out)["perplexity"]
    assert ppl == pytest.approx(7.0, rel=1e-3)  # 6 words + <eos>
    assert math.isfinite(ppl)
