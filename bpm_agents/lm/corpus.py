"""Word-level corpus for language modelling (Penn Treebank layout).

A corpus folder holds ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt`` (or ``train.txt``,
``valid.txt``, ``test.txt``): whitespace-separated tokens, one sentence per line. Every line ends
with an ``<eos>`` token. The vocabulary is built from the training split only; a token of another
split that is missing from it is an error (PTB already maps rare words to ``<unk>``).

Token streams are batch-first: :func:`batchify` cuts a split of N tokens into ``(B, N // B)``
parallel streams, and :func:`segment` reads BPTT segments out of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

SPLITS = ("train", "valid", "test")
EOS = "<eos>"


class CorpusError(ValueError):
    """A corpus folder or file that cannot be used (missing, empty, out-of-vocabulary token)."""


def split_path(folder: str | Path, split: str) -> Path:
    """Path of ``split`` in ``folder``: ``ptb.<split>.txt`` if present, else ``<split>.txt``."""
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise CorpusError(f"corpus folder {str(folder)!r} does not exist or is not a folder")
    for name in (f"ptb.{split}.txt", f"{split}.txt"):
        if (folder / name).is_file():
            return folder / name
    raise CorpusError(
        f"corpus folder {str(folder)!r} has no {split} split: expected ptb.{split}.txt or {split}.txt"
    )


def read_lines(path: Path) -> list[list[str]]:
    """Tokens of each line of ``path``, with ``<eos>`` appended (blank lines give just ``<eos>``)."""
    with open(path, encoding="utf-8") as f:
        return [line.split() + [EOS] for line in f]


class Vocabulary:
    """Word <-> index map. Indices follow first appearance in the training text."""

    def __init__(self, words: Sequence[str]) -> None:
        if len(set(words)) != len(words):
            raise CorpusError("vocabulary words must be unique")
        self.words: list[str] = list(words)
        self.index: dict[str, int] = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_tokens(cls, tokens: Iterable[str]) -> Vocabulary:
        return cls(list(dict.fromkeys(tokens)))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, lines: list[list[str]], source: str = "text") -> Tensor:
        """Indices of all tokens of ``lines``, flattened: (N,) int64.

        Raises:
            CorpusError: naming the first token that is not in the vocabulary and where it is.
        """
        index = self.index
        ids: list[int] = []
        for lineno, line in enumerate(lines, start=1):
            for tok in line:
                i = index.get(tok)
                if i is None:
                    raise CorpusError(
                        f"token {tok!r} at {source} line {lineno} is not in the training "
                        f"vocabulary ({len(self)} words); every word of valid/test must occur in train"
                    )
                ids.append(i)
        return torch.tensor(ids, dtype=torch.long)


class Corpus:
    """The splits of a corpus folder as index tensors, with the training vocabulary.

    Args:
        folder: the corpus folder.
        splits: which splits to load (``train`` is read for the vocabulary unless ``vocab`` given).
        vocab: an existing vocabulary (e.g. from a checkpoint); built from train when ``None``.
    Attributes:
        vocab: the vocabulary.
        train, valid, test: (N,) int64 token ids of each loaded split (absent ones are ``None``).
    """

    def __init__(
        self,
        folder: str | Path,
        splits: Sequence[str] = SPLITS,
        vocab: Vocabulary | None = None,
    ) -> None:
        self.folder = Path(folder)
        for s in splits:
            if s not in SPLITS:
                raise CorpusError(f"unknown split {s!r}; allowed: {', '.join(SPLITS)}")
        self.train: Tensor | None = None
        self.valid: Tensor | None = None
        self.test: Tensor | None = None
        paths = {s: split_path(self.folder, s) for s in splits}  # fail early on a missing split
        if vocab is None:
            train_path = paths.get("train") or split_path(self.folder, "train")
            train_lines = read_lines(train_path)
            vocab = Vocabulary.from_tokens(t for line in train_lines for t in line)
            if "train" in paths:
                self.train = vocab.encode(train_lines, str(train_path))
        self.vocab = vocab
        for s, path in paths.items():
            if getattr(self, s) is None:
                ids = vocab.encode(read_lines(path), str(path))
                setattr(self, s, ids)
        for s in paths:
            if getattr(self, s).numel() < 2:
                raise CorpusError(f"split {s!r} ({paths[s]}) has fewer than 2 tokens")

    def split(self, name: str) -> Tensor:
        """Token ids of a loaded split: (N,)."""
        if name not in SPLITS:
            raise CorpusError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}")
        ids = getattr(self, name)
        if ids is None:
            raise CorpusError(f"split {name!r} was not loaded")
        return ids


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """Cut a token stream into ``batch_size`` contiguous streams: (N,) -> (B, N // B).

    Stream b holds tokens ``[b * L, (b + 1) * L)``; the last ``N % B`` tokens are dropped.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    length = ids.numel() // batch_size
    if length < 2:
        raise ValueError(
            f"{ids.numel()} tokens are too few for batch_size {batch_size}: each stream needs >= 2"
        )
    return ids[: length * batch_size].view(batch_size, length)


def segment(streams: Tensor, start: int, bptt: int) -> tuple[Tensor, Tensor]:
    """One BPTT segment: inputs ``streams[:, start:start+T]`` and the next tokens as targets.

    Args:
        streams: (B, L) from :func:`batchify`.
        start: first position; the segment is shortened at the end of the streams.
        bptt: T, the segment length.
    Returns:
        inputs (B, T'), targets (B, T'), with T' = min(T, L - 1 - start).
    """
    t = min(bptt, streams.shape[1] - 1 - start)
    return streams[:, start : start + t], streams[:, start + 1 : start + 1 + t]


def segments(streams: Tensor, bptt: int) -> Iterator[tuple[Tensor, Tensor]]:
    """All BPTT segments of ``streams`` (B, L) in order."""
    if bptt < 1:
        raise ValueError(f"bptt must be >= 1, got {bptt!r}")
    for start in range(0, streams.shape[1] - 1, bptt):
        yield segment(streams, start, bptt)


def num_segments(streams: Tensor, bptt: int) -> int:
    """How many segments :func:`segments` yields."""
    return -(-(streams.shape[1] - 1) // bptt)
