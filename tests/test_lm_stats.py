"""The plasticity statistics of the LM logs on hand-made cases, and their columns in progress.csv."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from bpm_agents.lm.cli import train_main
from bpm_agents.lm.model import LanguageModel, LMConfig
from bpm_agents.lm.stats import STAT_NAMES, clip_share, modulator_stats, plasticity_stats, stat_columns


def test_constant_modulator_has_no_spread_and_full_saturation():
    s = modulator_stats(torch.full((4, 30), -0.99))
    assert s["m_mean"] == pytest.approx(-0.99)
    assert s["m_std_t"] == 0.0
    assert s["m_saturated"] == 1.0


def test_modulator_std_is_within_stream_over_time():
    # stream 0 alternates -1, 1 (std 1); stream 1 is constant 0.5 (std 0): mean std 0.5. The two
    # streams' means differ (0 vs 0.5), which a std over all entries would count and this must not.
    m = torch.tensor([[-1.0, 1.0, -1.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    s = modulator_stats(m)
    assert s["m_std_t"] == pytest.approx(0.5)
    assert s["m_saturated"] == pytest.approx(0.5)  # |M| > 0.95 in stream 0 only
    assert s["m_mean"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"m must have shape \(B, T >= 1\)"):
        modulator_stats(torch.zeros(3))


def test_clip_share_counts_entries_at_either_bound():
    hebb = torch.tensor([[[1.0, -1.0], [0.3, -0.999]], [[2.0**-30, 1.0], [-1.0, 0.0]]])
    assert clip_share(hebb, 1.0) == 0.5
    assert clip_share(torch.clamp(torch.randn(3, 8, 8) * 100, -2, 2), 2.0) > 0.9
    with pytest.raises(ValueError, match="clip must be > 0"):
        clip_share(hebb, 0.0)


def tiny(variant: str) -> LanguageModel:
    cfg = LMConfig(
        variant=variant, vocab_size=9, emb_size=4, hidden_sizes=(5, 3), weight_init=0.5, alpha_init=0.5
    )
    return LanguageModel(cfg, torch.Generator().manual_seed(0), impl="reference")


IDS = torch.randint(0, 9, (200,), generator=torch.Generator().manual_seed(1))


def test_model_statistics_on_a_pinned_modulator_and_saturated_traces():
    model = tiny("simple")
    with torch.no_grad():
        for layer in model.layers:
            layer.synapses.modulator.weight.zero_()
            layer.synapses.modulator.bias.fill_(math.atanh(0.99))  # M = 0.99 at every step
        model.layers[1].synapses.fanout_bias.fill_(1e6)  # layer 2's traces jump to the clip at once
    s = plasticity_stats(model, IDS, batch_size=3, steps=12)
    assert set(s) == set(stat_columns(2))
    for k in (1, 2):
        assert s[f"l{k}_m_mean"] == pytest.approx(0.99)
        assert s[f"l{k}_m_std_t"] == pytest.approx(0.0, abs=1e-12)
        assert s[f"l{k}_m_saturated"] == 1.0
    # step 1 starts from h = 0, so its traces stay 0: at most 11 of the 12 steps can be at the clip
    assert 0.85 < s["l2_hebb_at_clip"] <= 11 / 12 and s["l1_hebb_at_clip"] < 0.5
    assert s["l1_alpha_abs"] == pytest.approx(model.layers[0].synapses.alpha.abs().mean().item())
    assert s["l1_w_abs"] == pytest.approx(model.layers[0].weight_hh[:, 10:15].abs().mean().item())
    with torch.no_grad():
        for layer in model.layers:
            layer.synapses.alpha.zero_()
    assert plasticity_stats(model, IDS, batch_size=3, steps=12)["l1_plastic_ratio"] == 0.0


def test_plastic_ratio_by_hand_on_one_step():
    model = tiny("hebbian")
    layer = model.layers[0]
    with torch.no_grad():
        layer.synapses.eta.fill_(1.0)
    # step 1 starts from h = 0 (both inputs 0), step 2 from h_1 with Hebb_1: recompute by hand
    ids = IDS[:2]
    s = plasticity_stats(model, ids, batch_size=1, steps=2)
    x = model.embedding(ids.view(1, 2))
    drive = layer.input_drive(x)
    state = layer.reference_step(drive[:, 0], layer.initial_state(1)).state
    H = layer.hidden_size
    fixed = state.hidden @ layer.weight_hh[:, 2 * H : 3 * H]
    plastic = torch.einsum("bi,bij->bj", state.hidden, layer.synapses.alpha * state.hebb)
    assert s["l1_plastic_ratio"] == pytest.approx((plastic.abs().sum() / fixed.abs().sum()).item(), rel=1e-6)
    assert s["l1_m_mean"] is None  # hebbian: no modulator


def test_baseline_has_empty_statistics_and_model_mode_is_restored():
    model = tiny("lstm")
    model.train()
    s = plasticity_stats(model, IDS, batch_size=2, steps=5)
    assert all(v is None for v in s.values())
    assert model.training


def test_log_csv_has_the_statistics_at_every_validation_row(tmp_path: Path):
    words = ["a", "b", "c", "d", "e"]
    for split, n in (("train", 30), ("valid", 6), ("test", 6)):
        (tmp_path / f"{split}.txt").write_text(
            "\n".join(" ".join(words[(k + j) % 5] for j in range(5)) for k in range(n)) + "\n"
        )
    common = ["--data", str(tmp_path), "--batch-size", "2", "--bptt", "4", "--eval-batch-size", "2", "--no-progress",
              "--threads", "1", "--device", "cpu", "--target-params", "3000", "--max-steps", "4",
              "--valid-every", "2", "--stats-steps", "6"]  # fmt: skip
    for variant in ("retroactive", "lstm"):
        out = tmp_path / variant
        assert train_main(["--variant", variant, "--out", str(out), *common]) == 0
        rows = list(csv.DictReader(open(out / "progress.csv")))
        assert [r["kind"] for r in rows] == [
            "check",
            "check",
            "epoch",
        ]  # checks at steps 2 and 4, then the epoch row
        for r in rows:
            for k in (1, 2):
                values = [r[f"l{k}_{n}"] for n in STAT_NAMES]
                if variant == "lstm":
                    assert values == [""] * len(STAT_NAMES)
                else:
                    assert all(v != "" for v in values)
                    assert -1 <= float(r[f"l{k}_m_mean"]) <= 1 and 0 <= float(r[f"l{k}_m_saturated"]) <= 1
