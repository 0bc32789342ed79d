"""Recurrent-cell search on a text corpus (``--dataset ptb``): the search cell, its language model, and the
language-model side of the run, shared by every algorithm with a recurrent search (DARTS, GDAS).

The supernet is quark0/darts ``rnn/model_search.py`` (DARTS Sec. 2.1 and 3.1, "recurrent cell"): the
DARTS language model (``nas_zoo.models.rnn``) around a search cell of ``STEPS`` = 8 steps. Step i mixes every
earlier state s_0 .. s_i over ``RNN_PRIMITIVES`` with one weight matrix W_i shared by its predecessors,

    [c_j, h_j] = s_j W_i,    s_{i+1} = BN( sum_j sum_op w[j, op] * (s_j + sigmoid(c_j) * (op(h_j) - s_j)) ),

where the weights ``w`` come from the algorithm's mixing (DARTS's softmax, GDAS's Gumbel sample) and
``none`` adds nothing; s_0 is the DARTS cell's first state, also batch-normalised, and the batch norms have no
affine parameters. The cell outputs the mean of s_1 .. s_8.

The run (``LanguageSearch``, after ``rnn/train_search.py``) differs from an image search in its data,
loss and metric only: the training split, batchified, trains the weights; the validation split, batchified at
the same batch size, trains alpha, one window at the training window's position; each step takes a window
of 35 tokens (17 with probability 0.05) with the learning rate scaled by its length / 35, carries the hidden
states of both splits from window to window (detached: truncated BPTT) and adds the temporal activation
regulariser to the weights' loss (not to alpha's). An epoch ends with the validation perplexity at batch 10.
"""
import math
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..language.corpus import Corpus, batchify, get_batch, load_corpus
from ..language.lm import evaluate, window_loss
from ..models.rnn import ACTIVATIONS, INIT_RANGE, TiedLanguageModel, dropout_mask
from .bilevel import BiLevel, frozen
from .loop import Search
from .supernet import Mix, Supernet

RNN_PRIMITIVES = ("none", "tanh", "relu", "sigmoid", "identity")  # rnn/genotypes.py PRIMITIVES
STEPS = 8
EVAL_BATCH_SIZE = 10  # rnn/train_search.py eval_batch_size


class RecurrentSearchCell(nn.Module):
    """``DARTSCellSearch``: ``forward`` runs the mixed cell over a (T, B, ninp) sequence.

    ``dropoutx`` / ``dropouth`` are variational, as in the evaluation cell: one mask per sequence on x_t,
    one on every state that enters a matmul.
    """

    cell_type = "recurrent"

    def __init__(self, ninp: int, nhid: int, candidates: List[List[str]], steps: int = STEPS,
                 dropoutx: float = 0.75, dropouth: float = 0.25):
        super().__init__()
        self.ninp, self.nhid, self.steps, self.dropoutx, self.dropouth = ninp, nhid, steps, dropoutx, dropouth
        self._W0 = nn.Parameter(torch.empty(ninp + nhid, 2 * nhid).uniform_(-INIT_RANGE, INIT_RANGE))
        self._Ws = nn.ParameterList(nn.Parameter(torch.empty(nhid, 2 * nhid).uniform_(-INIT_RANGE, INIT_RANGE))
                                    for _ in range(steps))
        self.bn = nn.BatchNorm1d(nhid, affine=False)
        # the columns that compute something (``none`` adds nothing), with their activations
        names = candidates[0]
        self.active = [k for k, name in enumerate(names) if name != "none"]
        self.activations = [ACTIVATIONS[names[k]] for k in self.active]

    def forward(self, x: torch.Tensor, h: torch.Tensor, mix: Mix) -> torch.Tensor:
        """The outputs h_1..h_T (T, B, nhid) from inputs x (T, B, ninp), the state h_0 (B, nhid) and the
        mixing weights (edges x candidates; step i's rows are its i + 1 predecessors)."""
        T, B, _ = x.shape
        if self.training:
            x = x * dropout_mask(x, (B, self.ninp), self.dropoutx)
            h_mask = dropout_mask(h, (B, self.nhid), self.dropouth)
        x_proj = (x.reshape(T * B, self.ninp) @ self._W0[:self.ninp]).view(T, B, 2 * self.nhid)
        w_h = self._W0[self.ninp:]
        weights = mix.weights[:, self.active]
        per_step = weights.split(list(range(1, self.steps + 1)))
        outputs = []
        for t in range(T):
            c, g = torch.addmm(x_proj[t], h * h_mask if self.training else h, w_h).chunk(2, dim=1)
            states = self.bn(torch.lerp(h, g.tanh(), c.sigmoid())).unsqueeze(0)
            for W, w in zip(self._Ws, per_step):
                masked = states * h_mask if self.training else states
                c, g = (masked.reshape(-1, self.nhid) @ W).view(len(w), B, 2 * self.nhid).chunk(2, dim=-1)
                # sum_op w_op (s + c (op(g) - s)) = W s + c (sum_op w_op op(g) - W s), W = sum_op w_op
                mixed = torch.einsum("jk,kjbn->jbn", w, torch.stack([act(g) for act in self.activations]))
                kept = w.sum(1).view(-1, 1, 1) * states
                s = (kept + c.sigmoid() * (mixed - kept)).sum(0)
                states = torch.cat([states, self.bn(s).unsqueeze(0)])
            h = states[1:].mean(0)
            outputs.append(h)
        return torch.stack(outputs)


class RecurrentSupernet(TiedLanguageModel, Supernet):
    """``RNNModelSearch``: embedding -> recurrent search cell -> decoder tied to the embedding. ``forward``
    is ``RNNModel``'s: (T, B) tokens and a state (None: zeros) -> logits (T, B, ntoken), cell outputs."""

    def __init__(self, ntoken: int, nhid: int = 300, dropout: float = 0.75, dropouth: float = 0.25,
                 dropoutx: float = 0.75, dropouti: float = 0.2, dropoute: float = 0.0, mixing=None,
                 steps: int = STEPS):
        Supernet.__init__(self, steps, mixing, None)
        self.init_ends(ntoken, nhid, dropout, dropouti, dropoute, lambda: RecurrentSearchCell(
            nhid, nhid, self.candidates["recurrent"], steps, dropoutx=dropoutx, dropouth=dropouth))
        self.init_architecture()

    def every_candidate(self) -> Dict[str, List[List[str]]]:
        return {"recurrent": [list(RNN_PRIMITIVES)] * (self.nodes * (self.nodes + 1) // 2)}

    def forward(self, tokens: torch.Tensor, hidden: Optional[torch.Tensor] = None):
        hidden = self.init_hidden(tokens.size(1)) if hidden is None else hidden
        outputs = self.cell(self.embed(tokens), hidden, self.mixes()["recurrent"])
        return self.decode(outputs), outputs


@dataclass
class Window:
    """One BPTT window of a batchified split: (T, B) inputs and targets, the state carried in (None: zeros)
    and, once a loss has run on it, the state it hands to the next window (detached: truncated BPTT)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    hidden: Optional[torch.Tensor]
    next_hidden: Optional[torch.Tensor] = None


class LanguageBiLevel(BiLevel):
    """The two steps on windows of text: alpha's loss is the cross-entropy (``RNNModelSearch._loss``); the
    weights' adds the temporal activation regulariser (``tar``), as ``rnn/train_search.py`` does."""

    def batch(self, window: Window) -> Window:
        return window  # the corpus is on the device already

    def loss(self, window: Window) -> torch.Tensor:
        loss, _, outputs = window_loss(self.model, window.inputs, window.targets, window.hidden, 0.0)
        window.next_hidden = outputs[-1].detach()
        return loss

    def weights_step(self, window: Window):
        """One SGD step on the training window (alpha held constant); returns (loss, perplexity)."""
        self.w_optimizer.zero_grad(set_to_none=True)
        with frozen(self.alphas):
            raw_loss, loss, outputs = window_loss(self.model, window.inputs, window.targets, window.hidden,
                                                  self.config.tar)
            loss.backward()
        window.next_hidden = outputs[-1].detach()
        nn.utils.clip_grad_norm_(self.weights, self.config.grad_clip)
        self.w_optimizer.step()
        return raw_loss.item(), math.exp(raw_loss.item())


@dataclass
class CorpusData:
    """The corpus and its batchified splits: ``train`` trains the weights, ``search`` (the validation split
    at the training batch size) trains alpha, ``valid`` (at batch 10) measures the supernet."""

    corpus: Corpus
    train: torch.Tensor
    search: torch.Tensor
    valid: torch.Tensor


def window_length(bptt: int) -> int:
    """``rnn/train_search.py``: ``bptt``, or half of it with probability 0.05 (no noise, unlike training)."""
    return bptt if random.random() < 0.95 else int(bptt / 2)


class LanguageSearch(Search):
    """A search of a recurrent cell as a language model; the stages, checkpoints and outputs are ``Search``'s."""

    bilevel_class = LanguageBiLevel
    several_processes = False  # its windows carry states from batch to batch: not split over processes yet

    def load_data(self) -> CorpusData:
        cfg = self.config
        random.seed(cfg.seed)  # the window lengths
        corpus = load_corpus(cfg.dataset, cfg.data_dir)
        splits = (batchify(corpus.train, cfg.batch_size), batchify(corpus.valid, cfg.batch_size),
                  batchify(corpus.valid, EVAL_BATCH_SIZE))
        return CorpusData(corpus, *(s.to(cfg.device) for s in splits))

    def network(self, stage: int, candidates) -> RecurrentSupernet:
        cfg = self.config
        return RecurrentSupernet(len(self.data.corpus.words), cfg.nhid, *cfg.dropouts,
                                 mixing=self.algorithm.recurrent_mixing())

    @staticmethod
    def shape(model: RecurrentSupernet) -> Dict[str, int]:
        return {"steps": model.nodes, "nhid": model.nhid, "words": model.ntoken}

    def fixed_batches(self, n: int) -> List[Window]:
        """The first ``n`` windows of the architecture split, each from a zero state (the collapse monitor's)."""
        bptt = self.config.bptt
        return [Window(*get_batch(self.data.search, i * bptt, bptt), None) for i in range(n)]

    def steps_per_epoch(self) -> int:
        windows = math.ceil((self.data.train.size(0) - 2) / self.config.bptt)
        return min(windows, self.config.max_batches or windows)

    def train_epoch(self, epoch: int, advance=lambda: None) -> Dict[str, float]:
        """One pass over the training split (or ``max_batches`` windows of it), one step per window, then the
        perplexity on the validation split."""
        self.model.train()
        cfg, search, data, arch_data = self.config, self.bilevel, self.data.train, self.data.search
        lr, hidden, arch_hidden = search.lr(), None, None
        i, batches, total = 0, 0, 0.0
        while i < data.size(0) - 2 and batches < (cfg.max_batches or math.inf):
            seq_len = window_length(cfg.bptt)
            train = Window(*get_batch(data, i, seq_len), hidden)
            valid = None
            if epoch >= cfg.arch_warmup:
                valid = Window(*get_batch(arch_data, i % (arch_data.size(0) - 1), cfg.bptt), arch_hidden)
            for group in search.w_optimizer.param_groups:
                group["lr"] = lr * seq_len / cfg.bptt  # longer windows, larger steps
            loss, _ = search.step(train, valid)
            hidden = train.next_hidden
            arch_hidden = arch_hidden if valid is None else valid.next_hidden
            total, batches, i = total + loss, batches + 1, i + seq_len
            advance()
        for group in search.w_optimizer.param_groups:
            group["lr"] = lr
        return {"train_loss": total / batches, "train_ppl": math.exp(total / batches), **self.validate()}

    def validate(self) -> Dict[str, float]:
        loss, _ = evaluate(self.model, self.data.valid, self.config.bptt)
        return {"valid_loss": loss, "valid_ppl": math.exp(loss)}

    @staticmethod
    def summary(stats: Dict[str, Any]) -> str:
        return f"train ppl {stats['train_ppl']:.1f}, valid ppl {stats['valid_ppl']:.1f}"

    @staticmethod
    def outcome(record: Dict[str, Any]) -> str:
        return LanguageSearch.summary(record["epochs"][-1]) if record["epochs"] else "no epoch run"

    def derive(self):
        return self.algorithm.derive_recurrent(self.model)

    def cell_notes(self) -> Dict[str, Any]:
        corpus = self.data.corpus
        return {"data": {"dataset": corpus.dataset, "words": len(corpus.words), "train_tokens": corpus.train.numel(),
                         "valid_tokens": corpus.valid.numel()}}
