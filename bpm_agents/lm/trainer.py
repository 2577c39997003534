"""Truncated-BPTT training and perplexity evaluation of :class:`~bpm_agents.lm.model.LanguageModel`.

State (hidden, cell, Hebbian and eligibility traces) is carried, detached, from one BPTT segment
to the next, and reset to zero at the start of every training epoch and every evaluation pass.

A run folder (:mod:`bpm_agents.runs`, kind ``lm``) holds ``config.json`` (the model and training
configs under ``config``), ``progress.csv`` (one row per epoch and per in-epoch check, with the
plasticity statistics of :mod:`bpm_agents.lm.stats` per layer), ``checkpoint.pt`` (for resume),
``best.pt`` (lowest validation perplexity) and ``test.json``. Checkpoints are the one format of
:mod:`bpm_agents.checkpoint` (kind ``lm``; atomic, no pickled code on load).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bpm_agents import checkpoint
from bpm_agents.checkpoint import CheckpointError, atomic_write_text, check_config_dict, writable_dir
from bpm_agents.config import opt, rename_keys
from bpm_agents.lm.corpus import Corpus, Vocabulary, batchify, num_segments, segment, segments
from bpm_agents.lm.model import RENAMED_FIELDS, LanguageModel, LMConfig, LSTMState, logits_loss
from bpm_agents.lm.stats import plasticity_stats, stat_columns
from bpm_agents.runs import CHECKPOINT_FILE, PROGRESS_FILE, ProgressLog, run_loop, write_run_config

#: the format of LM checkpoints before the one checkpoint format (still loaded)
LEGACY_FORMAT = "bpm-lm-1"
LOSS_REDUCTIONS = ("sum_time", "mean")
#: the ``algo`` of a language-model run folder (config.json; ``kind`` is ``lm``)
LM_ALGO = "lm-truncated-bptt"
#: the files of LM run folders of earlier versions (still resumed and evaluated)
LEGACY_CHECKPOINT = "last.pt"
LEGACY_LOG = "log.csv"


def checkpoint_path(run_dir: str | Path) -> Path:
    """The resume checkpoint of an LM run folder: ``checkpoint.pt`` (``last.pt`` in earlier versions)."""
    run_dir = Path(run_dir)
    new, old = run_dir / CHECKPOINT_FILE, run_dir / LEGACY_CHECKPOINT
    return old if not new.exists() and old.exists() else new


#: the largest learning rate the float32 optimizer steps can take (larger ones overflow)
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
#: which parameters get the L2 penalty: every one, all but the plastic ones (alpha, the rates,
#: the modulator and fan-out: the parameters of each layer's ``synapses``), or none
L2_SCOPES = ("all", "non-plastic", "none")
LOG_FIELDS = (
    "epoch", "kind", "step", "lr", "train_ppl", "valid_ppl", "test_ppl",
    "train_tokens_per_s", "epoch_s", "elapsed_s",
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (SGD with a per-epoch step decay, as in Zaremba et al. 2014).

    Attributes:
        lr: initial learning rate.
        lr_decay: factor applied once per epoch from ``decay_start`` on:
            ``lr(e) = lr * lr_decay ** max(0, e - decay_start + 1)`` (epochs count from 1).
        decay_start: first epoch with a decayed learning rate.
        epochs: number of epochs.
        max_steps: cap on optimizer steps over the whole run (``None``: no cap).
        batch_size, bptt: training streams and segment length.
        eval_batch_size: streams for validation / test.
        clip: gradient-norm clip.
        l2: L2 penalty, applied as SGD weight decay (adds ``l2 * w`` to each gradient).
        l2_on: which parameters get it: ``all``, ``non-plastic`` (not alpha, eta, eta_e, the
            modulator or the fan-out) or ``none``.
        seed: seeds initialisation and dropout.
        loss_reduction: ``sum_time`` (the loss of a segment is summed over its time steps and
            averaged over the batch, as in Zaremba et al., so their lr 1.0 and clip 5 carry over)
            or ``mean`` (averaged over all tokens, as in AWD-LSTM). Perplexities are always per token.
        eval_test_each_epoch: also report test perplexity after every epoch.
        valid_every: also validate every this many optimizer steps inside an epoch (``None``:
            only at epoch ends); such rows have kind ``check`` in the log.
        stats_steps: the plasticity statistics of every validation row are measured on this many
            steps of the validation streams (0: no statistics).
    """

    lr: float = field(default=1.0, metadata=opt("initial learning rate (SGD)"))
    lr_decay: float = field(default=0.5, metadata=opt("per-epoch lr factor from --decay-start on"))
    decay_start: int = field(default=5, metadata=opt("first epoch with a decayed lr"))
    epochs: int = field(default=13, metadata=opt("number of epochs"))
    max_steps: int | None = field(
        default=None,
        metadata=opt(
            "cap on optimizer steps over the run (quick runs); an epoch cut short counts as done for --resume",
            default="no cap",
        ),
    )
    batch_size: int = field(default=20, metadata=opt("training streams"))
    bptt: int = field(default=20, metadata=opt("BPTT segment length"))
    eval_batch_size: int = field(default=10, metadata=opt("streams for validation and test"))
    clip: float = field(default=5.0, metadata=opt("gradient-norm clip", flag="grad_clip", aliases=["clip"]))
    l2: float = field(default=1e-6, metadata=opt("L2 penalty (SGD weight decay)"))
    seed: int = field(default=0, metadata=opt("seed of initialisation and dropout"))
    loss_reduction: str = field(
        default="sum_time",
        metadata=opt(
            "sum_time: a segment's loss summed over time, averaged over the batch (Zaremba et al.); "
            "mean: averaged over all tokens (AWD-LSTM)",
            choices=LOSS_REDUCTIONS,
        ),
    )
    eval_test_each_epoch: bool = field(default=False, metadata=opt("also log test perplexity every epoch"))
    valid_every: int | None = field(
        default=None,
        metadata=opt("also validate every N optimizer steps inside an epoch", default="at epoch ends only"),
    )
    l2_on: str = field(default="all", metadata=opt("parameters that get the L2 penalty", choices=L2_SCOPES))
    stats_steps: int = field(
        default=200,
        metadata=opt(
            "steps of the validation streams the plasticity statistics in progress.csv are measured on (0: none)"
        ),
    )

    def __post_init__(self) -> None:
        checks = {
            "lr": 0 < self.lr <= FLOAT32_MAX, "lr_decay": 0 < self.lr_decay <= 1, "decay_start": self.decay_start >= 1,
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1, "bptt": self.bptt >= 1,
            "eval_batch_size": self.eval_batch_size >= 1, "clip": self.clip > 0, "l2": self.l2 >= 0,
            "max_steps": self.max_steps is None or self.max_steps >= 1,
            "valid_every": self.valid_every is None or self.valid_every >= 1,
        }  # fmt: skip
        checks["loss_reduction"] = self.loss_reduction in LOSS_REDUCTIONS
        checks["stats_steps"] = self.stats_steps >= 0
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            hint = " (a finite number > 0, at most 3.4e38, the float32 range)" if bad[0] == "lr" else ""
            raise ValueError(f"invalid training setting {bad[0]}={getattr(self, bad[0])!r}{hint}")
        if self.l2_on not in L2_SCOPES:
            raise ValueError(f"l2_on must be one of {', '.join(L2_SCOPES)}, got {self.l2_on!r}")

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.lr_decay ** max(0, epoch - self.decay_start + 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# name -> (architecture, optimisation). The small model follows Zaremba et al.'s small LSTM as in
# the paper; the large one is shaped like the paper's AWD-LSTM model (meant for a GPU).
PRESETS: dict[str, tuple[LMConfig, TrainConfig]] = {
    "small": (
        LMConfig(emb_size=200, hidden_sizes=(200, 200), tied=False, weight_init=0.1),
        TrainConfig(lr=1.0, lr_decay=0.5, decay_start=5, epochs=13, batch_size=20, bptt=20, clip=5.0, l2=1e-6),
    ),
    # the paper's description of its small model: one eta per connection (hebbian), fan-out per
    # connection (modulated), the modulator reading h_{t-1}, clip 1
    "small-paper": (
        LMConfig(emb_size=200, hidden_sizes=(200, 200), tied=False, weight_init=0.1, trace_clip=1.0,
                 eta_shape="connection", fanout="connection", modulator_input="previous"),
        TrainConfig(lr=1.0, lr_decay=0.5, decay_start=5, epochs=13, batch_size=20, bptt=20, clip=5.0, l2=1e-6),
    ),
    # the authors' LSTM code: alpha per neuron, 1e-4 * U(0, 1), its gradient / N; fan-out per
    # neuron with Linear(1, N)'s default init; clip 2
    "small-authors": (
        LMConfig(emb_size=200, hidden_sizes=(200, 200), tied=False, weight_init=0.1, trace_clip=2.0,
                 alpha="neuron", alpha_init=1e-4, alpha_grad_scale="1/N", fanout="neuron",
                 fanout_init="default"),
        TrainConfig(lr=1.0, lr_decay=0.5, decay_start=5, epochs=13, batch_size=20, bptt=20, clip=5.0, l2=1e-6),
    ),
    "large": (
        LMConfig(
            emb_size=400, hidden_sizes=(1150, 1150, 400), tied=True, alpha="neuron", weight_init=0.1,
            dropout_input=0.4, dropout_hidden=0.25, dropout_output=0.4,
        ),
        TrainConfig(lr=30.0, lr_decay=0.5, decay_start=300, epochs=500, batch_size=20, bptt=70,
                    eval_batch_size=10, clip=0.25, l2=1.2e-6, loss_reduction="mean"),
    ),
}  # fmt: skip


class NonFiniteLossError(RuntimeError):
    """The training loss or gradient became NaN or Inf; the step was not applied."""


def perplexity(loss: float) -> float:
    """``exp(loss)``, or ``inf`` where that overflows (a diverged model's loss can exceed 709)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@dataclass
class EpochCursor:
    """Where an epoch stands, so that an interrupted epoch can continue where it stopped.

    Attributes:
        steps: segments of the epoch done.
        state: the carried (detached) recurrent state after them; ``None`` at the epoch start.
        loss_total, count: sum of per-token losses and tokens so far (for the epoch's mean).
    """

    steps: int = 0
    state: list[LSTMState] | None = None
    loss_total: float = 0.0
    count: int = 0

    def to_dict(self) -> dict[str, Any]:
        layers = [[t.detach().cpu() for t in layer] for layer in self.state or []]
        return {"steps": self.steps, "state": layers, "loss_total": self.loss_total,
                "count": self.count}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: str | torch.device) -> EpochCursor:
        state = [LSTMState(*(t.to(device) for t in layer)) for layer in d["state"]]
        return cls(int(d["steps"]), state or None, float(d["loss_total"]), int(d["count"]))


@torch.no_grad()
def evaluate(model: LanguageModel, ids: Tensor, batch_size: int = 10, bptt: int = 20) -> tuple[float, float]:
    """Mean loss (nats per token) and perplexity of ``model`` on a token stream ``ids`` (N,).

    The stream is cut into ``batch_size`` parallel streams; the state starts at zero and is
    carried across segments.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    streams = batchify(ids, batch_size).to(device)
    state = model.initial_state(batch_size, device)
    total, count = 0.0, 0
    for inputs, targets in segments(streams, bptt):
        logits, state = model(inputs, state)
        total += logits_loss(logits, targets).item() * targets.numel()
        count += targets.numel()
    model.train(was_training)
    loss = total / count
    return loss, perplexity(loss)


def parameter_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """SGD parameter groups with the weight decay of ``config.l2_on``: one group for ``all`` and
    ``none`` (as before the option existed, so old optimizer states load), two for
    ``non-plastic`` (the fixed weights with L2, the plastic parameters without)."""
    params = list(model.named_parameters())
    if config.l2_on == "all":
        return [{"params": [p for _, p in params], "weight_decay": config.l2}]
    if config.l2_on == "none":
        return [{"params": [p for _, p in params], "weight_decay": 0.0}]
    plastic = [p for n, p in params if ".synapses." in n]
    fixed = [p for n, p in params if ".synapses." not in n]
    return [{"params": fixed, "weight_decay": config.l2}, {"params": plastic, "weight_decay": 0.0}]


def train_step(
    model: LanguageModel, streams: Tensor, optimizer: torch.optim.Optimizer, config: TrainConfig,
    cursor: EpochCursor,
) -> tuple[int, float]:  # fmt: skip
    """One optimizer step on the epoch's next segment (number ``cursor.steps``) of ``streams`` (B, L).

    The state is carried (detached) from ``cursor.state``, zero at the epoch's first segment;
    ``cursor`` is advanced. Returns (tokens, mean loss per token) of the segment.

    Raises:
        NonFiniteLossError: NaN/Inf loss or gradient norm (that step is not applied).
    """
    model.train()
    k = cursor.steps
    if cursor.state is None:
        cursor.state = model.initial_state(streams.shape[0], streams.device)
    inputs, targets = segment(streams, k * config.bptt, config.bptt)
    state = [s.detach() for s in cursor.state]
    logits, state = model(inputs, state)
    loss = logits_loss(logits, targets)
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(f"training loss is {value} at step {k + 1} of the epoch; not applied")
    objective = loss * targets.shape[1] if config.loss_reduction == "sum_time" else loss
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, config.clip)
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(f"gradient norm is {norm.item()} at step {k + 1} of the epoch; not applied")
    optimizer.step()
    model.project_parameters()
    cursor.loss_total += value * targets.numel()
    cursor.count += targets.numel()
    cursor.steps = k + 1
    cursor.state = [s.detach() for s in state]
    return targets.numel(), value


def train_epoch(
    model: LanguageModel,
    streams: Tensor,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    max_steps: int | None = None,
    cursor: EpochCursor | None = None,
) -> tuple[float, int, float]:
    """One pass over the training streams (B, L) by :func:`train_step`, the state reset at its start.

    Args:
        max_steps: stop after this many optimizer steps (``None``: whole epoch).
        cursor: continue an epoch from this position; it is updated after every step.
    Returns:
        (mean training loss over the epoch so far, optimizer steps taken by this call, tokens
        per second).
    """
    cursor = cursor if cursor is not None else EpochCursor()
    per_epoch = num_segments(streams, config.bptt)
    tokens, steps, start = 0, 0, time.perf_counter()
    while cursor.steps < per_epoch and (max_steps is None or steps < max_steps):
        tokens += train_step(model, streams, optimizer, config, cursor)[0]
        steps += 1
    seconds = time.perf_counter() - start
    return cursor.loss_total / max(cursor.count, 1), steps, tokens / max(seconds, 1e-9)


# --- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as a checkpoint of kind ``lm`` (:mod:`bpm_agents.checkpoint`, atomic)."""
    checkpoint.save_checkpoint(path, {"kind": "lm", **payload})


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an LM checkpoint safely (``weights_only=True``); files of earlier versions too.

    Raises:
        CheckpointError: missing file, unreadable / corrupted file, or not an LM checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return checkpoint.load_checkpoint(path, map_location, kind="lm", legacy_formats=(LEGACY_FORMAT,))
    except CheckpointError as exc:
        if "is not a readable checkpoint" in str(exc):
            raise
        raise CheckpointError(f"{str(path)!r} is not a language-model checkpoint ({exc})") from None


def model_from_checkpoint(
    payload: dict[str, Any], device: str | torch.device = "cpu"
) -> tuple[LanguageModel, Vocabulary]:
    """Rebuild the model and vocabulary a checkpoint holds."""
    try:
        saved = rename_keys(payload["model_config"], RENAMED_FIELDS)  # checkpoints of older versions
        check_config_dict(LMConfig, saved)
        config = LMConfig.from_dict(saved)
        # the seeded init is overwritten by the saved weights
        model = LanguageModel(config, torch.Generator().manual_seed(0)).to(device)
        model.load_state_dict(payload["model"])
        vocab = Vocabulary(payload["vocab"])
    except ValueError as exc:
        raise CheckpointError(f"checkpoint holds a bad model config: {exc}") from None
    except (KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"checkpoint content does not match its model config: {exc}") from None
    if len(vocab) != config.vocab_size:
        raise CheckpointError(f"checkpoint vocabulary has {len(vocab)} words, model {config.vocab_size}")
    return model, vocab


# --- a whole run -------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_training(
    out: str | Path,
    corpus: Corpus,
    model_config: LMConfig,
    train_config: TrainConfig,
    device: torch.device,
    resume: bool = False,
    progress_bar: bool = True,
    extra_config: dict[str, Any] | None = None,
    impl: str = "auto",
    resume_flags: dict[str, tuple[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train, validating every epoch, keep the best checkpoint, then report test perplexity.

    Args:
        out: run folder (created).
        corpus: with train, valid and test loaded.
        model_config, train_config: what to train and how (ignored on resume, where the
            checkpoint's are used except ``epochs`` and ``max_steps``).
        device: where to train.
        resume: continue from ``out/checkpoint.pt`` (``last.pt`` of an earlier version).
        progress_bar: show a tqdm bar with tokens/s and running perplexity.
        extra_config: recorded in ``config.json`` (e.g. the command line).
        impl: the plastic step implementation (``auto``, ``fast``, ``reference``; see
            :class:`~bpm_agents.lm.model.PlasticLSTMCell`); same numbers to rounding.
        resume_flags: on resume, config field -> (flag, value) given on the command line; a
            value that differs from the checkpoint's is refused (``ValueError``), as the saved
            settings are kept.
    Returns:
        summary dict: best validation perplexity, test perplexity, epochs, steps, seconds.
    """
    run = _LMRun(out, corpus, model_config, train_config, device, resume, extra_config, impl, resume_flags)
    return run.train(progress_bar)


class _LMRun:
    """One language-model run folder as a :class:`bpm_agents.runs.Job`: one update is one
    optimizer step on the next BPTT segment; epochs, validations and checkpoints follow from it.

    Built by :func:`run_training`, which documents the arguments; :func:`bpm_agents.runs.run_loop`
    drives it (progress bar, Ctrl-C / SIGTERM, the final save).
    """

    def __init__(
        self,
        out: str | Path,
        corpus: Corpus,
        model_config: LMConfig,
        train_config: TrainConfig,
        device: torch.device,
        resume: bool,
        extra_config: dict[str, Any] | None,
        impl: str,
        resume_flags: dict[str, tuple[str, Any]] | None,
    ) -> None:
        self.out = out = writable_dir(out, "--out")
        self.corpus, self.device, self.impl = corpus, device, impl
        init_gen = torch.Generator().manual_seed(train_config.seed)
        self.drop_gen = torch.Generator(device=device).manual_seed(train_config.seed + 1)
        #: the last epoch completed (or cut short by max_steps), optimizer steps, best valid ppl
        self.epoch, self.steps_done, self.best, self.elapsed0 = 0, 0, math.inf, 0.0
        opt_state = None
        #: where the epoch in progress stands; ``None`` between epochs
        self.cursor: EpochCursor | None = None
        if resume:
            payload = load_checkpoint(checkpoint_path(out), map_location=device)
            train_config, model = self._restore(payload, train_config, resume_flags)
            opt_state = payload["optimizer"]
        else:
            if model_config.vocab_size != len(corpus.vocab):
                model_config = replace(model_config, vocab_size=len(corpus.vocab))
            model = LanguageModel(model_config, init_gen).to(device)
        self.model, self.model_config, self.train_config = model, model.config, train_config
        model.set_dropout_generator(self.drop_gen)
        model.set_impl(impl)
        groups = [g for g in parameter_groups(model, train_config) if g["params"]]
        self.optimizer = torch.optim.SGD(groups, lr=train_config.lr_at(max(self.epoch, 1)))
        if opt_state is not None:
            self.optimizer.load_state_dict(opt_state)

        self.n_params = sum(p.numel() for p in model.parameters())
        extra = dict(extra_config or {})
        command = extra.pop("argv", None)
        write_run_config(
            out, "lm", LM_ALGO, {"model": self.model_config.to_dict(), "train": train_config.to_dict()},
            command=command, parameters=self.n_params, device=str(device), torch_threads=torch.get_num_threads(),
            **extra,
        )  # fmt: skip
        _log(
            f"{self.model_config.variant}: hidden {list(self.model_config.hidden_sizes)}, "
            f"{self.n_params:,} parameters, device {device}"
        )
        if resume and not (out / PROGRESS_FILE).exists() and (out / LEGACY_LOG).exists():
            os.replace(out / LEGACY_LOG, out / PROGRESS_FILE)  # a folder of an earlier version
        # rows after the checkpoint (checks of an epoch a kill cut short) are dropped on resume; a
        # resumed run keeps its log's columns (a log written before the statistics has none)
        self.log = ProgressLog(out / PROGRESS_FILE, [*LOG_FIELDS, *stat_columns(len(model.layers))], key="step",
                               keep_through=self.steps_done if resume else None)  # fmt: skip
        self.train_streams = batchify(corpus.split("train"), train_config.batch_size).to(device)
        self.per_epoch = num_segments(self.train_streams, train_config.bptt)
        self.target = self._target_steps()
        self.run_start = time.perf_counter()
        self._saved_at: int | None = self.steps_done if resume else None
        self.running = {"loss": 0.0, "tokens": 0, "seconds": 0.0}
        self.epoch_t0 = time.perf_counter()
        self.lr = train_config.lr_at(self.epoch + 1)  # of the epoch in progress or next
        if self.cursor is not None:  # resumed inside an epoch: its learning rate
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr

    def _restore(
        self, payload: dict[str, Any], given: TrainConfig, resume_flags: dict[str, tuple[str, Any]] | None
    ) -> tuple[TrainConfig, LanguageModel]:
        """The saved settings and model of the checkpoint; refuse flags that contradict them."""
        path = checkpoint_path(self.out)
        try:
            check_config_dict(TrainConfig, payload.get("train_config"))
            saved = TrainConfig(**payload["train_config"])
        except ValueError as exc:
            raise CheckpointError(f"{path} holds a bad training config: {exc}") from None
        train_config = replace(saved, epochs=given.epochs, max_steps=given.max_steps)
        model, vocab = model_from_checkpoint(payload, self.device)
        saved_values = {**payload["model_config"], **payload["train_config"]}
        conflicts = [
            f"{flag} {value} (saved: {json.dumps(saved_values.get(name))})"
            for name, (flag, value) in (resume_flags or {}).items()
            if name in saved_values
            and value != saved_values[name]
            and not (isinstance(value, (list, tuple)) and list(value) == list(saved_values[name]))
        ]
        if conflicts:
            raise ValueError(
                f"--resume keeps the settings saved in {path}, but these flags differ "
                f"from them: {'; '.join(conflicts)}. Drop them, or start a new run with another --out"
            )
        if vocab.words != self.corpus.vocab.words:
            raise CheckpointError(
                "the checkpoint's vocabulary differs from this corpus's training vocabulary"
            )
        self.epoch, self.steps_done, self.best = payload["epoch"], payload["step"], payload["best_valid_ppl"]
        self.elapsed0 = payload.get("elapsed_s", 0.0)
        self.drop_gen.set_state(payload["dropout_generator"].cpu())
        if payload.get("in_epoch") is not None:
            self.cursor = EpochCursor.from_dict(payload["in_epoch"], self.device)
            _log(
                f"resuming {self.out} from step {self.steps_done} (epoch {self.epoch + 1}, "
                f"{self.cursor.steps} steps into it; best valid ppl {self.best:.2f})"
            )
        else:
            _log(
                f"resuming {self.out} from step {self.steps_done} (after epoch {self.epoch}, best valid ppl {self.best:.2f})"
            )
        return train_config, model

    def _target_steps(self) -> int:
        """The run's last step: the remaining epochs (the one in progress finished), capped by max_steps."""
        cfg = self.train_config
        if cfg.epochs <= self.epoch:
            return self.steps_done
        left_in_current = 0 if self.cursor is None else self.per_epoch - self.cursor.steps
        full_epochs = cfg.epochs - self.epoch - (self.cursor is not None)
        target = self.steps_done + left_in_current + full_epochs * self.per_epoch
        return target if cfg.max_steps is None else min(target, max(cfg.max_steps, self.steps_done))

    # --- the Job

    @property
    def updates_done(self) -> int:
        return self.steps_done

    def elapsed(self) -> float:
        """Training seconds of the whole run (continued across resumes)."""
        return self.elapsed0 + time.perf_counter() - self.run_start

    def step(self) -> list[dict[str, Any]]:
        """One optimizer step; the log rows of the validations it led to (a check, the epoch end)."""
        cfg = self.train_config
        if self.cursor is None:  # a new epoch begins
            self.cursor = EpochCursor()
            self.lr = cfg.lr_at(self.epoch + 1)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr
            self.running = {"loss": 0.0, "tokens": 0, "seconds": 0.0}
            self.epoch_t0 = time.perf_counter()
        t0 = time.perf_counter()
        tokens, loss = train_step(self.model, self.train_streams, self.optimizer, cfg, self.cursor)
        self.steps_done += 1
        run = self.running
        run["loss"] += loss * tokens
        run["tokens"] += tokens
        run["seconds"] += time.perf_counter() - t0  # training time only: validations left out
        rows = []
        if cfg.valid_every and self.cursor.steps % cfg.valid_every == 0:
            rows.append(self.check())
        if self.cursor.steps >= self.per_epoch or self.steps_done >= self.target:
            rows.append(self.end_epoch())  # an epoch cut short by max_steps counts as done
        return rows

    def postfix(self) -> dict[str, str]:
        run = self.running
        return {
            "epoch": str(self.epoch + (self.cursor is not None)),
            "tok_s": f"{run['tokens'] / max(run['seconds'], 1e-9):.0f}",
            "ppl": f"{perplexity(run['loss'] / max(run['tokens'], 1)):.1f}",
        }

    def save(self) -> None:
        """``checkpoint.pt`` of the state now: inside an epoch with its cursor, else after it."""
        if self._saved_at == self.steps_done:
            return  # the epoch end just saved this very state
        in_epoch = self.cursor if self.cursor is not None and self.cursor.steps > 0 else None
        save_checkpoint(
            self.out / CHECKPOINT_FILE, self.payload(self.steps_done, None, self.elapsed(), in_epoch)
        )
        self._saved_at = self.steps_done

    # --- what a step leads to

    def validate(self, with_test: bool) -> tuple[float, float | None]:
        bs, bptt = self.train_config.eval_batch_size, self.train_config.bptt
        valid = evaluate(self.model, self.corpus.split("valid"), bs, bptt)[1]
        test = evaluate(self.model, self.corpus.split("test"), bs, bptt)[1] if with_test else None
        return valid, test

    def row(self, kind: str, train_ppl: float, valid: float, test: float | None) -> dict[str, Any]:
        """A log row (with the plasticity statistics) at the current step."""
        cfg = self.train_config
        stats: dict[str, float | None] = {}
        if cfg.stats_steps > 0:
            stats = plasticity_stats(
                self.model, self.corpus.split("valid"), cfg.eval_batch_size, cfg.stats_steps
            )
        tok_s = self.running["tokens"] / max(self.running["seconds"], 1e-9)
        values: dict[str, Any] = {
            "epoch": self.epoch + 1, "kind": kind, "step": self.steps_done, "lr": f"{self.lr:.6g}",
            "train_ppl": f"{train_ppl:.3f}", "valid_ppl": f"{valid:.3f}",
            "test_ppl": "" if test is None else f"{test:.3f}", "train_tokens_per_s": f"{tok_s:.0f}",
            "epoch_s": f"{time.perf_counter() - self.epoch_t0:.1f}", "elapsed_s": f"{self.elapsed():.1f}",
        }  # fmt: skip
        values.update({k: "" if v is None else f"{v:.6g}" for k, v in stats.items()})
        return values

    def payload(self, at_step: int, valid: float | None, elapsed: float,
                in_epoch: EpochCursor | None = None) -> dict[str, Any]:  # fmt: skip
        """What ``checkpoint.pt`` / ``best.pt`` hold after ``at_step`` steps."""
        return {
            "model_config": self.model_config.to_dict(), "train_config": self.train_config.to_dict(),
            "vocab": self.corpus.vocab.words, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            # the last epoch completed; an interrupted one is resumed from ``in_epoch``
            "epoch": self.epoch, "in_epoch": None if in_epoch is None else in_epoch.to_dict(),
            "step": at_step, "best_valid_ppl": self.best if valid is None else min(self.best, valid),
            "valid_ppl": valid, "elapsed_s": elapsed, "dropout_generator": self.drop_gen.get_state(),
        }  # fmt: skip

    def check(self) -> dict[str, Any]:
        """An in-epoch validation (``valid_every``): its row, and ``best.pt`` if it improved."""
        assert self.cursor is not None
        valid, test = self.validate(False)
        values = self.row(
            "check", perplexity(self.cursor.loss_total / max(self.cursor.count, 1)), valid, test
        )
        _log(
            f"check at step {self.steps_done}: valid ppl {valid:.2f}"
            + ("" if test is None else f" test ppl {test:.2f}")
        )
        if valid < self.best:
            self.best = valid
            save_checkpoint(self.out / "best.pt", self.payload(self.steps_done, valid, self.elapsed()))
        return values

    def end_epoch(self) -> dict[str, Any]:
        """Validate, log, keep ``best.pt`` and save ``checkpoint.pt``: the epoch is done."""
        assert self.cursor is not None
        cfg = self.train_config
        train_ppl = perplexity(self.cursor.loss_total / max(self.cursor.count, 1))
        valid_ppl, test_ppl = self.validate(cfg.eval_test_each_epoch)
        values = self.row("epoch", train_ppl, valid_ppl, test_ppl)
        tok_s = self.running["tokens"] / max(self.running["seconds"], 1e-9)
        _log(
            f"epoch {self.epoch + 1}: lr {self.lr:.4g} train ppl {train_ppl:.2f} valid ppl {valid_ppl:.2f}"
            + ("" if test_ppl is None else f" test ppl {test_ppl:.2f}")
            + f" ({self.cursor.steps} steps, {tok_s:.0f} tok/s, {time.perf_counter() - self.epoch_t0:.0f} s)"
        )
        self.epoch += 1
        self.cursor = None
        payload = self.payload(self.steps_done, valid_ppl, self.elapsed())
        if valid_ppl < self.best:
            self.best = valid_ppl
            save_checkpoint(self.out / "best.pt", payload)
        save_checkpoint(self.out / CHECKPOINT_FILE, payload)
        self._saved_at = self.steps_done
        return values

    # --- the run

    def train(self, progress_bar: bool) -> dict[str, Any]:
        result = run_loop(self, self.out, self.target, self.log, checkpoint_every=None, progress=progress_bar,
                          tensorboard=False, unit="step")  # fmt: skip
        if result.interrupted:
            where = (
                f"at step {self.steps_done} ({self.cursor.steps} of {self.per_epoch} steps into epoch {self.epoch + 1})"
                if self.cursor is not None
                else f"after epoch {self.epoch}"
            )
            _log(
                f"interrupted by {result.signal_name} {where}: checkpoint saved to {self.out / CHECKPOINT_FILE}"
            )
        return self.finish(result.interrupted)

    def finish(self, interrupted: bool) -> dict[str, Any]:
        """The run's summary; after a complete run, the best checkpoint's test perplexity (test.json)."""
        best_path = self.out / "best.pt"
        summary: dict[str, Any] = {"variant": self.model_config.variant, "parameters": self.n_params,
                                   "epochs": self.epoch, "steps": self.steps_done, "best_valid_ppl": self.best,
                                   "elapsed_s": self.elapsed(), "interrupted": interrupted}  # fmt: skip
        if best_path.exists() and not interrupted:
            best_model, _ = model_from_checkpoint(load_checkpoint(best_path, self.device), self.device)
            best_model.set_impl(self.impl)
            cfg = self.train_config
            test_loss, test_ppl = evaluate(
                best_model, self.corpus.split("test"), cfg.eval_batch_size, cfg.bptt
            )
            summary.update(test_ppl=test_ppl, test_loss=test_loss, checkpoint=str(best_path))
            atomic_write_text(self.out / "test.json", json.dumps(summary, indent=2) + "\n")
            _log(f"test ppl {test_ppl:.2f} (best valid ppl {self.best:.2f}, {best_path})")
        return summary
