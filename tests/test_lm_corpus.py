"""Corpus reading, vocabulary, batching and segmenting for the PTB language models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bpm_agents.lm.corpus import (
    EOS,
    Corpus,
    CorpusError,
    Vocabulary,
    batchify,
    num_segments,
    segment,
    segments,
)

#: the real Penn Treebank folder (ptb.{train,valid,test}.txt), from the environment; .ci/run sets
#: it to ../shared/data/ptb when that folder exists
PTB_DIR = os.environ.get("BPM_PTB_DIR")
PTB = Path(PTB_DIR) if PTB_DIR else None


def _ptb_skip_reason() -> str | None:
    if PTB is None:
        return "BPM_PTB_DIR is not set (point it at a folder with ptb.train.txt to run this test)"
    if not (PTB / "ptb.train.txt").is_file():
        return f"BPM_PTB_DIR={PTB_DIR} holds no ptb.train.txt"
    return None


def write_corpus(folder: Path, train: str, valid: str, test: str, prefix: str = "ptb.") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{prefix}{name}.txt").write_text(text)
    return folder


def test_reads_splits_appends_eos_and_builds_vocab_from_train(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path, " the cat sat \n the dog \n", "the cat\n", "dog sat\n")
    corpus = Corpus(folder)
    assert corpus.vocab.words == ["the", "cat", "sat", EOS, "dog"]
    # train: the cat sat <eos> the dog <eos>
    assert corpus.train.tolist() == [0, 1, 2, 3, 0, 4, 3]
    assert corpus.valid.tolist() == [0, 1, 3]
    assert corpus.test.tolist() == [4, 2, 3]
    assert corpus.train.dtype == torch.long


def test_plain_split_names_are_accepted(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path, "a b\n", "b a\n", "a\n", prefix="")
    corpus = Corpus(folder)
    assert corpus.test.tolist() == [corpus.vocab.index["a"], corpus.vocab.index[EOS]]


def test_given_vocab_is_used_and_train_is_not_needed(tmp_path: Path) -> None:
    (tmp_path / "test.txt").write_text("y x\n")
    vocab = Vocabulary(["x", "y", EOS])
    corpus = Corpus(tmp_path, splits=("test",), vocab=vocab)
    assert corpus.test.tolist() == [1, 0, 2]
    assert corpus.train is None
    with pytest.raises(CorpusError, match="not loaded"):
        corpus.split("valid")


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        Corpus(tmp_path / "nowhere")


def test_missing_split_names_the_expected_files(tmp_path: Path) -> None:
    (tmp_path / "ptb.train.txt").write_text("a b\n")
    (tmp_path / "ptb.valid.txt").write_text("a\n")
    with pytest.raises(CorpusError, match=r"no test split: expected ptb\.test\.txt or test\.txt"):
        Corpus(tmp_path)


def test_out_of_vocabulary_token_names_token_and_line(tmp_path: Path) -> None:
    folder = write_corpus(tmp_path, "a b\n", "a\nb zebra\n", "a\n")
    with pytest.raises(CorpusError, match=r"'zebra' at .*ptb\.valid\.txt line 2"):
        Corpus(folder)


def test_corpus_error_is_a_value_error() -> None:
    assert issubclass(CorpusError, ValueError)


def test_batchify_is_batch_first_contiguous_streams() -> None:
    ids = torch.arange(11)
    streams = batchify(ids, 3)
    assert streams.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]  # last 11 % 3 dropped
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        batchify(ids, 0)
    with pytest.raises(ValueError, match="too few"):
        batchify(ids, 6)


def test_segments_cover_every_next_token_once() -> None:
    streams = batchify(torch.arange(24), 2)  # (2, 12)
    segs = list(segments(streams, 5))
    assert len(segs) == num_segments(streams, 5) == 3  # 11 predictions: 5 + 5 + 1
    inputs = torch.cat([x for x, _ in segs], dim=1)
    targets = torch.cat([y for _, y in segs], dim=1)
    assert inputs.tolist() == streams[:, :-1].tolist()
    assert targets.tolist() == streams[:, 1:].tolist()
    x, y = segment(streams, 10, 5)
    assert x.tolist() == [[10], [22]] and y.tolist() == [[11], [23]]


@pytest.mark.skipif(_ptb_skip_reason() is not None, reason=str(_ptb_skip_reason()))
def test_real_ptb_counts() -> None:
    corpus = Corpus(PTB)
    assert len(corpus.vocab) == 10_000
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (929_589, 73_760, 82_430)
    assert corpus.vocab.words.count(EOS) == 1 and "<unk>" in corpus.vocab.index
