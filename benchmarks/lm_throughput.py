"""Training and evaluation tokens/s of the LM variants next to PyTorch's nn.LSTM, same run.

Small preset on real PTB: embedding 200, two LSTM layers (200 units for the baseline, the
parameter-matched size for the plastic variants), 10k softmax, batch 20, BPTT 20, SGD with
gradient clipping; evaluation at batch 10 without gradients. The reference is ``nn.LSTM`` (its
fused CPU kernels) with the same embedding / decoder / optimiser. Models are timed in interleaved
rounds so that load from other processes hits them alike (each round starts with two untimed
training steps for every model: the allocator's cached buffers are the previous model's); the median round is reported.
``--impl`` times each plastic variant with the C++ segment kernel (``fast``,
:mod:`bpm_agents.ops.plastic_lstm`) and/or the autograd path of :mod:`bpm_agents.plasticity`
(``reference``) in the same run; every model of one variant starts from the same weights.

    python benchmarks/lm_throughput.py --data ../shared/data/ptb --threads 1 --impl fast,reference

``--preset`` takes the architecture of a preset (``small``, ``small-paper``, ``small-authors``);
each model's line says which path its plastic layers take (``fast``, or ``reference`` and why,
e.g. an option the kernel does not implement); ``--impl fast`` is then timed as ``auto``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# as in train.py: idle OpenMP threads sleep instead of spinning on the cores the plastic kernel's
# own threads need (set OMP_WAIT_POLICY=ACTIVE to time torch's default instead)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bpm_agents.lm.corpus import Corpus, batchify, segment  # noqa: E402
from bpm_agents.lm.model import (  # noqa: E402
    VARIANTS,
    LanguageModel,
    config_parameters,  # noqa: E402
    logits_loss,
    match_hidden_size,
)
from bpm_agents.lm.trainer import PRESETS  # noqa: E402
from bpm_agents.ops.plastic_lstm import IMPLS, option_reason, path_of  # noqa: E402


class TorchLSTMLM(nn.Module):
    """The reference: nn.Embedding -> nn.LSTM (batch first) -> nn.Linear."""

    def __init__(self, vocab: int, emb: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, layers, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)

    def initial_state(self, batch_size: int, device=None):
        z = torch.zeros(self.lstm.num_layers, batch_size, self.lstm.hidden_size)
        return (z, z.clone())

    def forward(self, tokens, state):
        out, state = self.lstm(self.embedding(tokens), state)
        return self.decoder(out), state


def detach(state):
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return [s.detach() for s in state]


def time_train(
    model, streams, steps: int, start: int, bptt: int, clip: float, warmup: int = 2
) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``steps`` SGD steps, state carried (detached), after
    ``warmup`` untimed steps (the cached buffers of the model timed before are not this one's)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = model.initial_state(streams.shape[0])
    model.train()
    for k in range(warmup + steps):
        if k == warmup:
            wall, cpu = time.perf_counter(), time.process_time()
        x, y = segment(streams, start + k * bptt, bptt)
        state = detach(state)
        logits, state = model(x, state)
        loss = logits_loss(logits, y) * y.shape[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return time.perf_counter() - wall, time.process_time() - cpu


@torch.no_grad()
def time_eval(model, streams, steps: int, bptt: int) -> tuple[float, float]:
    model.eval()
    state = model.initial_state(streams.shape[0])
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(steps):
        x, _ = segment(streams, k * bptt, bptt)
        _, state = model(x, state)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ptb"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=8, help="SGD steps per timed round")
    p.add_argument("--eval-steps", type=int, default=20, help="segments per timed eval round")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--eval-batch-size", type=int, default=10)
    p.add_argument("--bptt", type=int, default=20)
    p.add_argument(
        "--preset",
        default="small",
        choices=[k for k in PRESETS if k.startswith("small")],
        help="architecture and plasticity options of this preset",
    )
    p.add_argument(
        "--impl",
        default="fast,reference",
        help="comma-separated step implementations to time: auto, fast, reference",
    )
    args = p.parse_args(argv)
    impls = [s.strip() for s in args.impl.split(",") if s.strip()]
    bad = [i for i in impls if i not in IMPLS]
    if bad or not impls:
        p.error(f"--impl: unknown {bad or args.impl!r}; allowed: {', '.join(IMPLS)}")
    torch.set_num_threads(args.threads)

    corpus = Corpus(args.data)
    vocab = len(corpus.vocab)
    train = batchify(corpus.train, args.batch_size)
    valid = batchify(corpus.valid, args.eval_batch_size)
    from dataclasses import replace

    base = replace(PRESETS[args.preset][0], variant="lstm", vocab_size=vocab)
    target = config_parameters(base)
    models: dict[str, nn.Module] = {}
    torch.manual_seed(0)  # nn.LSTM's own init
    models["nn.LSTM"] = TorchLSTMLM(vocab, 200, 200, 2)
    for k, v in enumerate(args.variants):
        cfg, _ = match_hidden_size(replace(base, variant=v), target)
        # the plain LSTM has no plastic part: every impl runs the same code, so it is timed once
        for impl in impls if v != "lstm" else impls[:1]:
            name = v if (len(impls) == 1 or v == "lstm") else f"{v}[{impl}]"
            if impl == "fast" and option_reason(cfg.plasticity()) is not None:
                impl = "auto"  # the kernel declines this preset's options: time the fallback
            models[name] = LanguageModel(cfg, torch.Generator().manual_seed(k), impl=impl)
    print(f"preset {args.preset}; torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_WAIT_POLICY {os.environ['OMP_WAIT_POLICY']}, "
          f"batch {args.batch_size} x bptt {args.bptt}, "
          f"eval batch {args.eval_batch_size}; parameter target {target:,}")  # fmt: skip
    for name, m in models.items():
        hidden = m.lstm.hidden_size if name == "nn.LSTM" else m.config.hidden_sizes[0]
        path = "torch" if name == "nn.LSTM" else path_of(m.layers[0])
        print(
            f"  {name:22s} hidden {hidden:4d}  parameters {sum(q.numel() for q in m.parameters()):,}  path: {path}"
        )

    train_tok = args.train_steps * args.batch_size * args.bptt
    eval_tok = args.eval_steps * args.eval_batch_size * args.bptt
    res: dict[str, dict[str, list[float]]] = {n: {"tw": [], "tc": [], "ew": [], "ec": []} for n in models}
    for m in models.values():  # warm-up (allocator, first-call costs)
        time_train(m, train, 2, 0, args.bptt, 5.0, warmup=0)
        time_eval(m, valid, 2, args.bptt)
    for r in range(args.rounds):
        start = (r + 1) * (args.train_steps + 2) * args.bptt
        for name, m in models.items():
            tw, tc = time_train(m, train, args.train_steps, start, args.bptt, 5.0)
            ew, ec = time_eval(m, valid, args.eval_steps, args.bptt)
            for k, v in zip(("tw", "tc", "ew", "ec"), (tw, tc, ew, ec)):
                res[name][k].append(v)

    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in res.items()}
    ref = med["nn.LSTM"]
    print()
    print(
        "| model | train tok/s | x nn.LSTM | train tok/CPU-s | x nn.LSTM | eval tok/s | x nn.LSTM | target >= 0.5x train |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, d in med.items():
        ok = "" if name in ("nn.LSTM", "lstm") else ("yes" if ref["tw"] / d["tw"] >= 0.5 else "no")
        print(
            f"| {name} | {train_tok / d['tw']:,.0f} | {ref['tw'] / d['tw']:.2f} | {train_tok / d['tc']:,.0f} | "
            f"{ref['tc'] / d['tc']:.2f} | {eval_tok / d['ew']:,.0f} | {ref['ew'] / d['ew']:.2f} | {ok} |"
        )
    print(f"\nmedian of {args.rounds} interleaved rounds; train round = 2 untimed + {args.train_steps} steps "
          f"({train_tok} tokens), eval round = {args.eval_steps} segments ({eval_tok} tokens)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
