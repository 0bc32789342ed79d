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
from typing import Any, Callable, Dict, Iterator, List, Optional

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

    The authors compute step i from all states before it, one matmul of the stacked states per step and one
    weighted sum per operation. We schedule the same arithmetic by state: once s_j exists, one matmul with
    W_j .. W_7 side by side gives its transforms for every later step, and one pass of elementwise operations
    adds its contributions to all their sums at once (``contributions``); step i's sum is complete, and s_{i+1}
    its batch norm, when s_i has added its own. A ``Mix`` that leaves edges out (``index`` None: EDNAS's
    child) runs only its edges, each with its one operation (``child_step``).
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
        self.names = candidates[0]
        self.active = [k for k, name in enumerate(self.names) if name != "none"]
        self.activations = [ACTIVATIONS[self.names[k]] for k in self.active]

    def forward(self, x: torch.Tensor, h: torch.Tensor, mix: Mix) -> torch.Tensor:
        """The outputs h_1..h_T (T, B, nhid) from inputs x (T, B, ninp), the state h_0 (B, nhid) and the
        mixing weights (edges x candidates; step i's rows are its i + 1 predecessors)."""
        T, B, _ = x.shape
        h_mask = None
        if self.training:
            x = x * dropout_mask(x, (B, self.ninp), self.dropoutx)
            h_mask = dropout_mask(h, (B, self.nhid), self.dropouth)
        x_proj = (x.reshape(T * B, self.ninp) @ self._W0[:self.ninp]).view(T, B, 2 * self.nhid)
        w_h = self._W0[self.ninp:]
        if mix.index is not None and None in mix.index:
            step = self.child_step(mix, h_mask)
        else:
            step = self.mixed_step(mix, h_mask)
        outputs = []
        for t in range(T):
            c, g = torch.addmm(x_proj[t], h if h_mask is None else h * h_mask, w_h).chunk(2, dim=1)
            h = torch.stack(step(self.bn(torch.lerp(h, g.tanh(), c.sigmoid())))).mean(0)
            outputs.append(h)
        return torch.stack(outputs)

    def mixed_step(self, mix: Mix, h_mask: Optional[torch.Tensor]):
        """s_0 -> [s_1 .. s_8] of the mixed cell; what depends on the weights alone is computed once here."""
        H, steps = self.nhid, self.steps
        weights = mix.weights[:, self.active]
        # state j feeds steps j .. steps - 1 (edge i (i + 1) / 2 + j of step i): their W side by side, and
        # per operation a column (n, 1) of its weights on those edges, and their sum over the operations
        readers = [torch.cat(list(self._Ws)[j:], dim=1) for j in range(steps)]
        columns = [weights[[i * (i + 1) // 2 + j for i in range(j, steps)]].T.unsqueeze(-1) for j in range(steps)]
        totals = [w.sum(0) for w in columns]
        columns = [list(w) for w in columns]

        def run(s: torch.Tensor) -> List[torch.Tensor]:
            states, sums = [], None
            for j in range(steps):
                c, g = ((s if h_mask is None else s * h_mask) @ readers[j]).view(len(s), steps - j, 2 * H).chunk(2, -1)
                added = self.contributions(s.unsqueeze(1), c, g, columns[j], totals[j])
                if sums is not None:
                    added = sums + added
                first, sums = added.split([1, steps - j - 1], dim=1)
                s = self.bn(first.squeeze(1))
                states.append(s)
            return states
        return run

    def contributions(self, s: torch.Tensor, c: torch.Tensor, g: torch.Tensor, w: torch.Tensor,
                      total: torch.Tensor) -> torch.Tensor:
        """A state's additions to the sums of the n steps it feeds, sum_op w_op (s + sigmoid(c) (op(g) - s)),
        as W s + sigmoid(c) (sum_op w_op op(g) - W s): s (B, 1, H), c and g (B, n, H), the weights w
        (ops, n, 1) and their sum W (n, 1)."""
        mixed = w[0] * self.activations[0](g)
        for w_op, act in zip(w[1:], self.activations[1:]):  # one fused multiply-add per operation
            mixed = torch.addcmul(mixed, w_op, act(g))
        return torch.lerp(total * s, mixed, c.sigmoid())

    def child_step(self, mix: Mix, h_mask: Optional[torch.Tensor]):
        """s_0 -> [s_1 .. s_8] of a child: step i sums its edges that run, s_j + sigmoid(c) (op(g) - s_j) for
        each (times its weight when the weight carries a gradient)."""
        edges = [[(j, mix.index[i * (i + 1) // 2 + j], i * (i + 1) // 2 + j) for j in range(i + 1)
                  if mix.index[i * (i + 1) // 2 + j] is not None] for i in range(self.steps)]
        scale = mix.weights.requires_grad

        def run(s: torch.Tensor) -> List[torch.Tensor]:
            states = [s]
            for W, chosen in zip(self._Ws, edges):
                total = 0
                for j, k, e in chosen:
                    src = states[j]
                    c, g = ((src if h_mask is None else src * h_mask) @ W).chunk(2, dim=1)
                    out = torch.lerp(src, ACTIVATIONS[self.names[k]](g), c.sigmoid())
                    total = total + (mix.weights[e, k] * out if scale else out)
                states.append(self.bn(total))
            return states[1:]
        return run


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
    start: int = 0  # its first row in the split


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
        return raw_loss.item(), perplexity(raw_loss.item())


@dataclass
class CorpusData:
    """The corpus and its batchified splits: ``train`` trains the weights, ``search`` (the validation split
    at the training batch size) trains alpha, ``valid`` (at batch 10) measures the supernet."""

    corpus: Corpus
    train: torch.Tensor
    search: torch.Tensor
    valid: torch.Tensor


def perplexity(loss: float) -> float:
    """exp(loss), inf where that overflows a float (a diverged model) rather than an error."""
    return math.inf if loss > 709 else math.exp(loss)


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

    def training_windows(self, advance: Callable[[], None]) -> Iterator[Window]:
        """The epoch's windows of the training split (``max_batches`` at most), each at the weights' learning
        rate scaled by its length / ``bptt`` (longer windows, larger steps) and carrying the state the one
        before handed on; ``advance`` ticks after each."""
        cfg, data, groups = self.config, self.data.train, self.bilevel.w_optimizer.param_groups
        lr, hidden, i, windows = self.bilevel.lr(), None, 0, 0
        try:
            while i < data.size(0) - 2 and windows < (cfg.max_batches or math.inf):
                seq_len = window_length(cfg.bptt)
                window = Window(*get_batch(data, i, seq_len), hidden, start=i)
                for group in groups:
                    group["lr"] = lr * seq_len / cfg.bptt
                yield window
                hidden, i, windows = window.next_hidden, i + seq_len, windows + 1
                advance()
        finally:
            for group in groups:
                group["lr"] = lr

    def train_epoch(self, epoch: int, advance=lambda: None) -> Dict[str, float]:
        """One pass over the training split (or ``max_batches`` windows of it), one step per window (alpha's on
        the validation window at the same row, then the weights'), then the perplexity on the validation split."""
        self.model.train()
        cfg, arch_data = self.config, self.data.search
        arch_hidden, losses = None, []
        for train in self.training_windows(advance):
            valid = None
            if epoch >= cfg.arch_warmup:
                valid = Window(*get_batch(arch_data, train.start % (arch_data.size(0) - 1), cfg.bptt), arch_hidden)
            losses.append(self.bilevel.step(train, valid)[0])
            arch_hidden = arch_hidden if valid is None else valid.next_hidden
        loss = sum(losses) / len(losses)
        return {"train_loss": loss, "train_ppl": perplexity(loss), **self.validate()}

    def validate(self) -> Dict[str, float]:
        loss, _ = evaluate(self.model, self.data.valid, self.config.bptt)
        return {"valid_loss": loss, "valid_ppl": perplexity(loss)}

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
