"""The fused C++ step of the plastic LSTM cell against the autograd reference (plasticity.py)."""

from __future__ import annotations

import pytest
import torch

from bpm_agents.lm.model import LanguageModel, LMConfig, LSTMState, PlasticLSTMCell, plasticity_for
from bpm_agents.ops import plastic_lstm as fast_step

pytestmark = pytest.mark.skipif(
    not fast_step.kernel_available(),
    reason="the C++ kernel of bpm_agents.ops.plastic_lstm cannot be built here",
)

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}
D, H = 5, 7


def make_cell(
    variant: str, dtype: torch.dtype, alpha: str = "connection", clip: float = 0.05
) -> PlasticLSTMCell:
    """A cell with every parameter U(-1, 1) (large, so the traces move fast and the clip saturates)."""
    cell = PlasticLSTMCell(D, H, plasticity_for(variant, alpha=alpha, clip=clip)).to(dtype)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=dtype) * 2 - 1)
        if hasattr(cell.synapses, "eta_e"):
            cell.synapses.eta_e.fill_(0.4)  # a running average, as project_parameters keeps it
    return cell


def run_two_segments(cell: PlasticLSTMCell, impl: str, x: torch.Tensor, with_state_grads: bool = False):
    """Segment 1 without gradients, then segment 2 (traces carried, detached) with a loss on the
    outputs and on every part of the final state. Returns the tensors to compare, by name."""
    cell.impl = impl
    cell.zero_grad(set_to_none=True)
    B, T, _ = x.shape
    with torch.no_grad():
        _, state = cell(x[:, : T // 2], cell.initial_state(B))
    state = state.detach()
    if with_state_grads:
        state = LSTMState(*(t.clone().requires_grad_(t.numel() > 0) for t in state))
    xs = x[:, T // 2 :].clone().requires_grad_(True)
    out, final = cell(xs, state)
    w = torch.linspace(-1, 1, H, dtype=x.dtype)
    loss = (out * w).sum() + (final.cell * w).sum()
    if final.hebb.numel():
        loss = loss + (final.hebb * torch.arange(H * H, dtype=x.dtype).view(H, H).sin()).sum()
    if final.elig.numel():
        loss = loss + 0.5 * final.elig.pow(2).sum()
    loss.backward()
    res = {"out": out.detach(), "h": final.hidden.detach(), "c": final.cell.detach(),
           "hebb": final.hebb.detach(), "elig": final.elig.detach(), "grad x": xs.grad}  # fmt: skip
    res.update({f"grad {n}": p.grad for n, p in cell.named_parameters()})
    if with_state_grads:
        res.update({f"grad state.{k}": t.grad for k, t in zip(LSTMState._fields, state) if t.requires_grad})
    return res


def assert_same(fast: dict, ref: dict, dtype: torch.dtype) -> None:
    assert fast.keys() == ref.keys()
    for name in ref:
        assert fast[name] is not None and ref[name] is not None, name
        torch.testing.assert_close(fast[name], ref[name], **TOL[dtype], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("variant", ["hebbian", "simple", "retroactive"])
def test_fast_step_equals_reference(variant: str, batch: int, dtype: torch.dtype) -> None:
    cell = make_cell(variant, dtype)
    x = torch.randn(batch, 8, D, generator=torch.Generator().manual_seed(batch), dtype=dtype)
    ref = run_two_segments(cell, "reference", x)
    fast = run_two_segments(cell, "fast", x)
    assert_same(fast, ref, dtype)
    param_names = {f"grad {n}" for n, _ in cell.named_parameters()}
    assert param_names <= fast.keys() and len(param_names) >= 5
    # the clip saturates somewhere and not everywhere, so both sides of the mask are tested
    at_clip = ref["hebb"].abs() >= 0.05 * (1 - 1e-6)
    assert 0 < at_clip.float().mean().item() < 1
    assert ref["grad synapses.alpha"].abs().sum() > 0


@pytest.mark.parametrize("variant", ["hebbian", "simple", "retroactive"])
def test_per_neuron_alpha_and_gradients_of_the_initial_state(variant: str) -> None:
    dtype = torch.float64
    cell = make_cell(variant, dtype, alpha="neuron")
    x = torch.randn(2, 6, D, generator=torch.Generator().manual_seed(5), dtype=dtype)
    ref = run_two_segments(cell, "reference", x, with_state_grads=True)
    fast = run_two_segments(cell, "fast", x, with_state_grads=True)
    assert "grad state.hebb" in ref and ref["grad state.hebb"].abs().sum() > 0
    assert_same(fast, ref, dtype)


def test_gradcheck_of_fast_step_and_sequence() -> None:
    """Finite differences, independent of the reference: one retroactive step (plastic input via
    autograd) and a 3-step segment (plastic input handed from kernel to kernel), every input."""
    cell = make_cell("retroactive", torch.float64, clip=10.0)  # away from the clip's kinks
    cell.impl = "fast"
    gen = torch.Generator().manual_seed(3)

    def rnd(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) - 0.5).requires_grad_(True)

    drive, h0, c0, hebb, elig = rnd(2, 3, 4 * H), rnd(2, H), rnd(2, H), rnd(2, H, H), rnd(2, H, H)

    def f(drive, h0, c0, hebb, elig, alpha, eta_e, wm):
        syn = cell.synapses
        saved = syn.alpha, syn.eta_e, syn.modulator.weight
        try:  # route the parameters through gradcheck's inputs
            del syn.alpha, syn.eta_e
            del syn.modulator.weight
            syn.alpha, syn.eta_e, syn.modulator.weight = alpha, eta_e, wm
            state = LSTMState(h0, c0, hebb, elig)
            one = fast_step.step(cell, drive[:, 0], state)
            out, last = fast_step.sequence(cell, drive, state)
            return (*one, out, *last)
        finally:
            del syn.alpha, syn.eta_e
            del syn.modulator.weight
            syn.alpha, syn.eta_e, syn.modulator.weight = saved

    p = cell.synapses
    params = tuple(t.detach().clone().requires_grad_(True) for t in (p.alpha, p.eta_e, p.modulator.weight))
    assert torch.autograd.gradcheck(f, (drive, h0, c0, hebb, elig, *params), eps=1e-6, atol=1e-6)


def test_no_grad_forward_and_two_threads_equal_reference() -> None:
    cell = make_cell("retroactive", torch.float64)
    x = torch.randn(5, 8, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ref = run_two_segments(cell, "reference", x)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the batch is split over two C++ threads; alpha's gradient is summed
    try:
        fast = run_two_segments(cell, "fast", x)
    finally:
        torch.set_num_threads(before)
    assert_same(fast, ref, torch.float64)
    with torch.no_grad():
        outs = {}
        for impl in ("reference", "fast"):
            cell.impl = impl
            outs[impl] = cell(x, cell.initial_state(5))
    for a, b in zip(outs["fast"][1], outs["reference"][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(outs["fast"][0], outs["reference"][0], rtol=1e-10, atol=1e-12)


def test_impl_selection() -> None:
    x = torch.zeros(2, 4 * H)
    plastic = PlasticLSTMCell(D, H, plasticity_for("simple"))
    plain = PlasticLSTMCell(D, H, plasticity_for("lstm"))
    assert plastic.impl == "auto"
    assert fast_step.use_fast(plastic, x, "auto") is True  # CPU, float32, kernel built
    # a plain LSTM has no plastic part: every impl runs the reference arithmetic
    assert fast_step.use_fast(plain, x, "auto") is False
    assert fast_step.use_fast(plain, x, "fast") is False
    assert fast_step.use_fast(plastic, x, "reference") is False
    half = PlasticLSTMCell(D, H, plasticity_for("simple")).to(torch.float16)
    with pytest.raises(ValueError, match="impl='fast' cannot run here"):
        fast_step.use_fast(half, x.half(), "fast")
    assert fast_step.use_fast(half, x.half(), "auto") is False  # falls back to the reference
    bad = plastic.initial_state(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="state.hidden must be a CPU torch.float32 tensor"):
        fast_step.step(plastic, x, bad)
    with pytest.raises(ValueError, match=r"state.hebb must have shape \(2, 7, 7\)"):
        fast_step.step(plastic, x, plastic.initial_state(3)._replace(hidden=x[:, :H], cell=x[:, :H]))
    with pytest.raises(ValueError, match="unknown impl 'cuda'"):
        PlasticLSTMCell(D, H, plasticity_for("simple"), impl="cuda")
    cfg = LMConfig(variant="hebbian", vocab_size=11, emb_size=6, hidden_sizes=(5, 4))
    model = LanguageModel(cfg, torch.Generator().manual_seed(0), impl="reference")
    assert [layer.impl for layer in model.layers] == ["reference", "reference"]
    model.set_impl("fast")
    assert [layer.impl for layer in model.layers] == ["fast", "fast"]
    with pytest.raises(ValueError, match="allowed: auto, fast, reference"):
        model.set_impl("gpu")


def test_language_model_training_step_equal_for_both_impls() -> None:
    """A whole LM (two layers, per-neuron fan-out, the loss through the decoder): same gradients."""
    cfg = LMConfig(variant="retroactive", vocab_size=13, emb_size=6, hidden_sizes=(5, 4), weight_init=0.5,
                   alpha_init=0.5, trace_clip=0.1)  # fmt: skip
    tokens = torch.randint(0, 13, (2, 7), generator=torch.Generator().manual_seed(4))
    grads = {}
    for impl in ("reference", "fast"):
        model = LanguageModel(cfg, torch.Generator().manual_seed(0), impl=impl).double()
        logits, _ = model(tokens[:, :-1], model.initial_state(2))
        torch.nn.functional.cross_entropy(logits.reshape(-1, 13), tokens[:, 1:].reshape(-1)).backward()
        grads[impl] = {n: p.grad for n, p in model.named_parameters()}
    for n, g in grads["reference"].items():
        torch.testing.assert_close(grads["fast"][n], g, rtol=1e-10, atol=1e-12, msg=lambda m: f"{n}: {m}")


def test_without_the_kernel_auto_falls_back_to_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_step._KERNEL, "_libs", None)
    monkeypatch.setattr(fast_step._KERNEL, "error", "disabled by BPM_DISABLE_FAST_UNROLL")
    cell = make_cell("retroactive", torch.float64)
    x = torch.randn(2, 4, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert fast_step.use_fast(cell, x.new_zeros(2, 4 * H), "auto") is False
    with pytest.raises(ValueError, match="C\\+\\+ kernel is unavailable"):
        fast_step.use_fast(cell, x.new_zeros(2, 4 * H), "fast")
    out, _ = cell(x, cell.initial_state(2))  # impl "auto": runs, on the reference
    cell.impl = "reference"
    torch.testing.assert_close(out, cell(x, cell.initial_state(2))[0], rtol=0, atol=0)


def test_training_keeps_no_per_step_traces() -> None:
    """The backward recomputes the traces: what autograd keeps for a fast segment is O(B T H),
    while the reference keeps a (B, H, H) trace per step."""
    B, T = 3, 6
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kept = {}
    for impl in ("fast", "reference"):
        cell = make_cell("retroactive", torch.float64)
        cell.impl = impl
        sizes: list[int] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, last = cell(x, cell.initial_state(B))
        (out.sum() + last.hebb.sum()).backward()
        kept[impl] = sizes
    traces = {impl: sum(n == B * H * H for n in sizes) for impl, sizes in kept.items()}
    assert traces["fast"] == 2  # the initial Hebb and E only
    assert traces["reference"] >= 2 * T  # Hebb and E (or their products) at every step
    assert sum(kept["fast"]) < 0.25 * sum(kept["reference"])
