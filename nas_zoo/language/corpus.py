"""Word-level corpora for the language models, read as the DARTS code reads them (rnn/data.py, rnn/utils.py).

``load_corpus("ptb", DIR)`` reads Penn Treebank (Mikolov's preprocessed files, ``ptb.{train,valid,test}.txt``)
or ``load_corpus("wt2", DIR)`` WikiText-2 (``wiki.{train,valid,test}.tokens``); the DARTS/AWD-LSTM names
``{train,valid,test}.txt`` are accepted too. Every line is split on whitespace and ends with ``<eos>``.
The vocabulary is the training split's, in order of first appearance (the original's ids). Both corpora
are preprocessed so that valid and test hold no word unseen in train (rare words are ``<unk>``).
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import torch

LAYOUTS = {  # dataset -> file names per split, standard first, then the DARTS code's
    "ptb": [("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"), ("train.txt", "valid.txt", "test.txt")],
    "wt2": [("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"), ("train.txt", "valid.txt", "test.txt")],
}
SPLITS = ("train", "valid", "test")
EOS = "<eos>"


class CorpusError(ValueError):
    """A corpus that is missing or malformed; the message names the file and what was expected."""


@dataclass
class Corpus:
    """Token ids of each split (1-D int64) and the vocabulary (id -> word)."""

    dataset: str
    words: List[str]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor


def _lines(path: Path) -> List[List[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not UTF-8 text (byte {e.start}); expected a tokenised corpus, one "
                          f"sentence per line") from None
    lines = [line.split() + [EOS] for line in text.splitlines()]
    if not any(len(words) > 1 for words in lines):
        raise CorpusError(f"{path}: holds no words; expected a tokenised corpus, one sentence per line")
    return lines


def _find_files(dataset: str, directory: Path) -> Tuple[Path, ...]:
    if dataset not in LAYOUTS:
        raise CorpusError(f"unknown corpus {dataset!r}; expected one of {', '.join(LAYOUTS)}")
    if not directory.is_dir():
        raise CorpusError(f"{directory}: no such directory (the {dataset} corpus: "
                          f"{', '.join(LAYOUTS[dataset][0])})")
    for names in LAYOUTS[dataset]:
        paths = tuple(directory / name for name in names)
        if any(p.is_file() for p in paths):
            missing = [p.name for p in paths if not p.is_file()]
            if missing:
                raise CorpusError(f"{directory}: {', '.join(missing)} missing (the {dataset} corpus needs "
                                  f"{', '.join(names)})")
            return paths
    layouts = " or ".join(", ".join(names) for names in LAYOUTS[dataset])
    raise CorpusError(f"{directory}: no {dataset} corpus here; looked for {layouts}")


def load_corpus(dataset: str, directory) -> Corpus:
    """The corpus ``dataset`` ("ptb" or "wt2") from ``directory``, tokenised with the training vocabulary."""
    paths = _find_files(dataset, Path(directory))
    ids: Dict[str, int] = {}
    splits = {}
    for split, path in zip(SPLITS, paths):
        lines = _lines(path)
        if split == "train":
            for word in (w for words in lines for w in words):
                ids.setdefault(word, len(ids))
        unknown = next((w for words in lines for w in words if w not in ids), None)
        if unknown is not None:
            raise CorpusError(f"{path}: word {unknown!r} is not in the training vocabulary; expected a "
                              f"preprocessed corpus (rare words replaced by <unk> in every split)")
        splits[split] = torch.tensor([ids[w] for words in lines for w in words], dtype=torch.long)
    return Corpus(dataset, list(ids), **splits)


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) ids -> (N // batch_size, batch_size): ``batch_size`` parallel streams, the tail dropped."""
    rows = data.size(0) // batch_size
    if rows < 2:
        raise CorpusError(f"{data.size(0)} tokens are too few for a batch size of {batch_size}")
    return data[:rows * batch_size].view(batch_size, rows).t().contiguous()


def get_batch(source: torch.Tensor, i: int, seq_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows i..i+seq_len of a batchified split and the same rows shifted by one (the next words)."""
    seq_len = min(seq_len, source.size(0) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len]
