"""The DARTS recurrent cell and its language model (Liu et al., DARTS, ICLR 2019, Sec. 2.1 and 3.2).

Built exactly as quark0/darts ``rnn/model.py`` builds it (GDAS's ``lib/nas_rnn`` and EDNAS's PTB code are
copies): an embedding, one DARTS cell, a decoder tied to the embedding, and AWD-LSTM's regularisers
(embedding dropout, locked i.e. variational dropout; Merity et al., 2018). Parameters match the original
to the unit: 22,960,000 at the PTB setting (10k words, 850 units), 33,127,878 at WikiText-2's (33,278, 700).

The cell computes, per time step t (DARTS Sec. 2.1, "recurrent cell"; ENAS's highway formulation):

    [c, h] = [x_t, h_{t-1}] W_0           s_0 = h_{t-1} + sigmoid(c) * (tanh(h) - h_{t-1})
    [c, h] = s_j W_i                      s_i = s_j + sigmoid(c) * (act_i(h) - s_j)   for step i = (act_i, j)
    h_t = mean(s_k for k in concat)

What differs from the original is only how the same arithmetic is scheduled: the input half of W_0 is
applied to all time steps in one matmul, and the steps that read the same state share one matmul.
"""
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..registry.genotype import RecurrentGenotype

INIT_RANGE = 0.04  # uniform(-0.04, 0.04) for every weight (rnn/model.py INITRANGE)
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda x: x}
# Per corpus: the vocabulary of its train split and the papers' width and regularisation (DARTS README and
# rnn/train.py; GDAS's configs/NAS-{PTB,WT2}-BASE.config and EDNAS's train.py hold the same values).
CORPUS_SETTINGS = {
    "ptb": dict(ntoken=10000, nhid=850, dropout=0.75, dropouth=0.25, dropoutx=0.75, dropouti=0.2, dropoute=0.1,
                wdecay=8e-7),
    "wt2": dict(ntoken=33278, nhid=700, dropout=0.75, dropouth=0.15, dropoutx=0.75, dropouti=0.2, dropoute=0.1,
                wdecay=5e-7),
}
MODEL_FIELDS = ("ntoken", "nhid", "dropout", "dropouth", "dropoutx", "dropouti", "dropoute")


def paper_setting(genotype: RecurrentGenotype, dataset: str) -> Dict[str, Any]:
    """The corpus's settings, overridden by what the genotype's paper ran on ``dataset`` (epochs...)."""
    evaluation = genotype.evaluation(dataset) or {}
    return {**CORPUS_SETTINGS[dataset], **{k: v for k, v in evaluation.items() if k not in ("model", "reported")}}


def dropout_mask(like: torch.Tensor, shape: Tuple[int, ...], p: float) -> torch.Tensor:
    """Bernoulli(1 - p) / (1 - p): the scaled keep-mask of inverted dropout."""
    return like.new_empty(shape).bernoulli_(1 - p).div_(1 - p)


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Variational dropout on a (T, B, D) sequence: one mask per sequence and unit, shared over time."""
    if not training or not p:
        return x
    return x * dropout_mask(x, (1, x.size(1), x.size(2)), p)


class DARTSCell(nn.Module):
    """One recurrent cell from a genotype; ``forward`` runs it over a whole (T, B, ninp) sequence.

    ``dropoutx`` / ``dropouth`` are variational: one mask per sequence on x_t and one on every state
    that enters a matmul (h_{t-1} and each s_j), as in the original.
    """

    def __init__(self, genotype: RecurrentGenotype, ninp: int, nhid: int, dropoutx: float = 0.75,
                 dropouth: float = 0.25):
        super().__init__()
        self.genotype, self.ninp, self.nhid = genotype, ninp, nhid
        self.dropoutx, self.dropouth = dropoutx, dropouth
        # Authors' parameter names and shapes: W0 acts on [x_t, h_{t-1}], one W per step, no biases.
        self._W0 = nn.Parameter(torch.empty(ninp + nhid, 2 * nhid).uniform_(-INIT_RANGE, INIT_RANGE))
        self._Ws = nn.ParameterList(
            nn.Parameter(torch.empty(nhid, 2 * nhid).uniform_(-INIT_RANGE, INIT_RANGE)) for _ in genotype.recurrent)
        # Steps grouped by the state they read: every group is one matmul, run once that state exists.
        readers: Dict[int, List[int]] = {}
        for step, (_, pred) in enumerate(genotype.recurrent):
            readers.setdefault(pred, []).append(step)
        self.groups = sorted(readers.items())  # states only read earlier states, so this order is valid

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The cell's outputs h_1..h_T (T, B, nhid) from inputs x (T, B, ninp) and the state h_0 (B, nhid)."""
        T, B, _ = x.shape
        if self.training:
            x = x * dropout_mask(x, (B, self.ninp), self.dropoutx)
            h_mask = dropout_mask(h, (B, self.nhid), self.dropouth)
        w_x, w_h = self._W0[:self.ninp], self._W0[self.ninp:]
        x_proj = (x.reshape(T * B, self.ninp) @ w_x).view(T, B, 2 * self.nhid)  # all time steps at once
        w_groups = [torch.cat([self._Ws[i] for i in steps], dim=1) for _, steps in self.groups]
        concat, outputs = self.genotype.concat, []
        for t in range(T):
            masked = h * h_mask if self.training else h
            c, g = torch.addmm(x_proj[t], masked, w_h).chunk(2, dim=1)
            states = {0: torch.lerp(h, g.tanh(), c.sigmoid())}  # s + c * (g - s), one kernel
            for (pred, steps), w in zip(self.groups, w_groups):
                s = states[pred]
                cg = ((s * h_mask if self.training else s) @ w).view(B, len(steps), 2, self.nhid)
                gates = cg[:, :, 0].sigmoid()
                for k, step in enumerate(steps):
                    act = ACTIVATIONS[self.genotype.recurrent[step][0]]
                    states[step + 1] = torch.lerp(s, act(cg[:, k, 1]), gates[:, k])
            h = torch.stack([states[k] for k in concat]).mean(0)
            outputs.append(h)
        return torch.stack(outputs)


class TiedLanguageModel:
    """The ends of the DARTS language model (rnn/model.py), around any cell: the embedding with embedding and
    locked dropout, and the decoder tied to the embedding. Shared by ``RNNModel`` and the search supernet."""

    def init_ends(self, ntoken: int, nhid: int, dropout: float, dropouti: float, dropoute: float,
                  make_cell: Callable[[], nn.Module]) -> None:
        """The embedding, then ``self.cell = make_cell()``, then the decoder (the original's order of RNG use)."""
        self.ntoken, self.nhid = ntoken, nhid
        self.dropout, self.dropouti, self.dropoute = dropout, dropouti, dropoute
        self.encoder = nn.Embedding(ntoken, nhid)  # ninp == nhid == nhidlast, asserted by the original
        self.cell = make_cell()
        # The decoder's weight *is* the embedding (weight tying, counted once); only its bias is its own.
        self.decoder_bias = nn.Parameter(torch.zeros(ntoken))
        nn.init.uniform_(self.encoder.weight, -INIT_RANGE, INIT_RANGE)

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        return self.decoder_bias.new_zeros(batch_size, self.nhid)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, B) token ids -> the cell's (T, B, nhid) inputs."""
        weight = self.encoder.weight
        if self.training and self.dropoute:  # embedding dropout: drop whole words, for the whole batch
            weight = weight * dropout_mask(weight, (self.ntoken, 1), self.dropoute)
        return locked_dropout(F.embedding(tokens, weight), self.dropouti, self.training)

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """The cell's (T, B, nhid) outputs -> logits (T, B, ntoken)."""
        return F.linear(locked_dropout(outputs, self.dropout, self.training), self.encoder.weight, self.decoder_bias)


class RNNModel(TiedLanguageModel, nn.Module):
    """DARTS language model: embedding -> DARTS cell -> decoder tied to the embedding (rnn/model.py RNNModel).

    ``forward(tokens, hidden)`` takes (T, B) token ids and the previous state (B, nhid) (None: zeros) and
    returns the logits (T, B, ntoken) and the cell's outputs (T, B, nhid); ``outputs[-1]`` is the next
    state, and the outputs also feed the temporal activation regulariser of the training recipe.
    """

    def __init__(self, genotype: RecurrentGenotype, ntoken: int, nhid: int = 850, dropout: float = 0.75,
                 dropouth: float = 0.25, dropoutx: float = 0.75, dropouti: float = 0.2, dropoute: float = 0.1):
        super().__init__()
        self.genotype = genotype
        self.init_ends(ntoken, nhid, dropout, dropouti, dropoute,
                       lambda: DARTSCell(genotype, nhid, nhid, dropoutx=dropoutx, dropouth=dropouth))

    def forward(self, tokens: torch.Tensor, hidden: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        hidden = self.init_hidden(tokens.size(1)) if hidden is None else hidden
        outputs = self.cell(self.embed(tokens), hidden)
        return self.decode(outputs), outputs
