"""EDNAS on Penn Treebank: the recurrent cell searched by structure and operation sampling (Lee, Kim & Han,
arXiv:1910.10397, Sec. 3 and 4.2), on ``ednas.py``'s policies and REINFORCE step and ``recurrent.py``'s model.

The space is DARTS's recurrent cell without ``none`` (the authors' ``genotypes.PRIMITIVES``: tanh, relu,
sigmoid, identity). Step 0 reads s_0; step i >= 1 has a structure policy ``inputs{i}`` over its i + 1
predecessors, and every edge an operation policy over the 4 activations (``alphas``, 36 x 4). A child is one
predecessor per step and one operation on it (``StepSample``): the DARTS evaluation cell with the search
cell's batch norms, and only its 8 edges run (``RecurrentSearchCell.child_step``).

Each epoch (``EdnasLanguageSearch.train_epoch``, after ``EDNAS_on_Penn_Treebank/train_search.py``): the
training split trains the weights, a new child per window (``--child-steps``), as DARTS's weights step (SGD
lr 20 scaled by the window's length, clip 0.25, weight decay 5e-7, TAR 1e-3, states carried); then, in eval
mode, each window of the validation split (batch 256) runs a new child whose reward is 80 / its perplexity
(``architect.reward_c``), the baseline moves toward it (decay 0.99) and Adam (3.5e-4, weight decay 1e-3) takes
``-(reward - baseline) log p(child)`` (``architect._backward_step_policy_rl``). The epoch's validation
perplexity is that of those children. At the end (``best_arch_search``) 100 children are scored, each on the
next window of the validation split at half the batch size with the state carried on, and the best reward is
the genotype; the genotype of each epoch is the policies' most likely child. 150 epochs.

By default the paper's method. ``--authors-code`` runs the released code as it is:

* its policies are constants (zeros, ``requires_grad=False``), so sampling stays uniform and no policy step
  is taken (its ``arch_loss.backward()`` has nothing to differentiate: on PyTorch >= 0.4 it raises);
* the cell takes the softmax of the one-hot sample as its weights (``DARTSCellSearch.cell``), so the child
  mixes every operation of every predecessor: 0.475 on the sampled one, 0.175 on the others, 0.25 each on
  the edges not sampled;
* the policy pass runs each validation window twice (``architect.step``, then ``model._loss`` again), the
  second from the state the first left, and reports the second's loss; its windows start 35 rows apart, or 17
  with probability 0.05, but are always 35 long (they overlap).
"""
import math
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch

from ..language.corpus import batchify, get_batch
from .ednas import Policies, sample_cell
from .recurrent import RNN_PRIMITIVES, STEPS, LanguageSearch, RecurrentSupernet, Window, perplexity, window_length
from .supernet import Mix

#: the authors' ``genotypes.PRIMITIVES``: the DARTS recurrent operations without ``none``
STEP_OPERATIONS = [p for p in RNN_PRIMITIVES if p != "none"]
REWARD_SCALE = 80.0  # reward = 80 / perplexity (architect.reward_c, as ENAS)


MAX_LOSS = 709.0  # the largest loss whose perplexity a float holds; above it (or NaN) a child has diverged


def reward(loss: Optional[float]) -> float:
    """80 / perplexity; 0 for a child that diverged (``loss`` None)."""
    return 0.0 if loss is None else REWARD_SCALE * math.exp(-loss)


def edge(step: int, predecessor: int) -> int:
    """The row of step ``step``'s edge from state ``predecessor`` (step i's rows are its i + 1 predecessors)."""
    return step * (step + 1) // 2 + predecessor


class StepSample(NamedTuple):
    """A recurrent child: the predecessor of steps 1 .. 7 (step 0 reads s_0), and each step's operation."""

    inputs: Tuple[int, ...]
    ops: Tuple[int, ...]

    def edges(self) -> List[int]:
        """The chosen edges, step by step."""
        return [edge(i, j) for i, j in enumerate((0, *self.inputs))]

    def mix(self, edges: int, operations: int, device: torch.device, authors_code: bool = False) -> Mix:
        """The child as the cell's ``Mix``: its operations one-hot, the other edges not run; ``authors_code``:
        the softmax of that one-hot matrix, every edge and operation mixed."""
        weights = torch.zeros(edges, operations, device=device)
        weights[self.edges(), list(self.ops)] = 1.0
        if authors_code:
            return Mix(weights.softmax(-1))
        index: List[Optional[int]] = [None] * edges
        for e, op in zip(self.edges(), self.ops):
            index[e] = op
        return Mix(weights, index)

    def steps(self, candidates) -> List[List[Any]]:
        """The genotype's ``recurrent`` field: [operation, predecessor] per step."""
        return [[candidates[e][op], j] for e, op, j in zip(self.edges(), self.ops, (0, *self.inputs))]


class StepPolicies(Policies):
    """The recurrent cell's policies: ``alphas`` (36 x 4) and ``inputs{i}`` over step i's i + 1 predecessors
    (the authors' ``edge_weights``)."""

    def choices(self, node: int) -> int:
        return node + 1


class EdnasRecurrentNetwork(RecurrentSupernet):
    """The recurrent search model on EDNAS's 4 operations running one sampled ``child`` (``{"recurrent":
    StepSample}``, set by the run) and holding the reward ``baseline`` (a buffer, so a checkpoint keeps it).
    ``authors_code``: constant zero policies, and the child mixed through a softmax (module docstring)."""

    def __init__(self, ntoken: int, nhid: int, dropouts, authors_code: bool = False):
        super().__init__(ntoken, nhid, *dropouts, mixing=StepPolicies(STEPS))
        self.authors_code = authors_code
        self.child: Dict[str, StepSample] = {}
        self.register_buffer("baseline", torch.zeros(()))
        if authors_code:
            for p in self.arch.parameters():
                p.detach_().zero_().requires_grad_(False)

    def every_candidate(self) -> Dict[str, List[List[str]]]:
        return {"recurrent": [list(STEP_OPERATIONS)] * edge(self.nodes, 0)}

    def mixes(self) -> Dict[str, Mix]:
        if not self.child:
            raise RuntimeError("EdnasRecurrentNetwork runs a sampled child: set .child before a forward pass")
        names = self.candidates["recurrent"]
        return {"recurrent": self.child["recurrent"].mix(len(names), len(names[0]), self.decoder_bias.device,
                                                         self.authors_code)}


class EdnasLanguageSearch(LanguageSearch):
    """EDNAS's recurrent search: ``Search``'s stages, checkpoints and outputs, ``LanguageSearch``'s corpus and
    weights step, and EDNAS's epoch, derivation and final choice (module docstring); the algorithm object
    (``ednas.Ednas``) holds the options, the policy loss and the entropies."""

    def load_data(self):
        data = super().load_data()
        method, batch_size = self.algorithm, self.config.batch_size
        self.policy_data = data.search if not method.policy_batch_size else batchify(
            data.corpus.valid, method.policy_batch_size).to(self.config.device)
        self.scoring_data = batchify(data.corpus.valid, method.policy_batch_size or max(1, batch_size // 2)
                                     ).to(self.config.device)
        return data

    def network(self, stage: int, candidates) -> EdnasRecurrentNetwork:
        cfg = self.config
        return EdnasRecurrentNetwork(len(self.data.corpus.words), cfg.nhid, cfg.dropouts, self.algorithm.authors_code)

    def sample(self) -> Dict[str, StepSample]:
        return {"recurrent": sample_cell(self.model.arch.of("recurrent"), self.model.nodes, StepSample)}

    def train_epoch(self, epoch: int, advance=lambda: None) -> Dict[str, Any]:
        """The weights on sampled children over the training windows, then the policies over the validation
        split's (``policy_pass``)."""
        model, method = self.model, self.algorithm
        model.train()
        losses = []
        for n, window in enumerate(self.training_windows(advance)):
            if n % method.child_steps == 0:
                model.child = self.sample()
            losses.append(self.bilevel.weights_step(window)[0])
        loss = sum(losses) / len(losses)
        valid, diverged = self.policy_pass(epoch)
        return {"train_loss": loss, "train_ppl": perplexity(loss), "valid_loss": valid, "valid_ppl": perplexity(valid),
                "diverged_windows": diverged, "reward_baseline": model.baseline.item(),
                "policy_entropy": method.entropies(model)}

    @torch.no_grad()
    def child_loss(self, window: Window) -> Optional[float]:
        """The current child's loss on ``window`` (eval mode), or None if it diverged: its state is then not
        carried on (``next_hidden`` None: the next window starts from zeros), so one child does not spoil the
        rewards of the next ones. In eval mode the batch norms use running statistics gathered over other
        children, and a child's states can outgrow them."""
        loss = self.bilevel.loss(window).item()
        if loss <= MAX_LOSS and bool(window.next_hidden.isfinite().all()):
            return loss
        window.next_hidden = None
        return None

    def policy_pass(self, epoch: int) -> Tuple[float, int]:
        """``train_arch``, in eval mode: per validation window a new child, its reward, one REINFORCE step;
        returns the children's mean loss per token and the number of windows on which they diverged
        (``child_loss``; left out of the mean, reward 0)."""
        model, search, method, cfg = self.model, self.bilevel, self.algorithm, self.config
        model.eval()
        data, hidden, i = self.policy_data, None, 0
        total = tokens = diverged = 0
        while i < data.size(0) - 2:
            window = Window(*get_batch(data, i, cfg.bptt), hidden)
            model.child = self.sample()
            loss = self.child_loss(window)
            policy_loss = method.policy_loss(model, model.child, reward(loss))  # moves the baseline
            if not method.authors_code:
                search.arch_step(search.grad(policy_loss, search.alphas))
            else:  # the released code runs the window once more, from the state the first run left
                window = Window(window.inputs, window.targets, window.next_hidden)
                loss = self.child_loss(window)
            hidden = window.next_hidden
            if loss is None:
                diverged += 1
            else:
                total, tokens = total + loss * window.inputs.numel(), tokens + window.inputs.numel()
            i += window_length(cfg.bptt) if method.authors_code else cfg.bptt
        if not tokens:
            raise ValueError(f"epoch {epoch + 1}: every child diverged on the validation split (their states outgrew "
                             "the batch norms' running statistics); the last checkpoint is kept")
        return total / tokens, diverged

    def derive(self) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """The policies' most likely child: each step's likeliest predecessor and, on it, operation."""
        policy = self.model.arch.of("recurrent")
        inputs = tuple(int(policy[f"inputs{i}"].argmax()) for i in range(1, self.model.nodes))
        ops = policy["alphas"].argmax(-1)[StepSample(inputs, ()).edges()]
        return self.fields(StepSample(inputs, tuple(ops.tolist()))), {}

    def fields(self, child: StepSample) -> Dict[str, Any]:
        return {"recurrent": child.steps(self.model.candidates["recurrent"]), "concat": list(range(1, STEPS + 1))}

    def conclude(self):
        """``best_arch_search``: ``derive_samples`` children, each scored in eval mode on the next
        ``derive_batches`` windows of the validation split (at half the batch size), the state carried from
        child to child; the first of the best rewards is the genotype (a child that diverges scores 0 and has
        no perplexity). All go to the record."""
        method, cfg, data = self.algorithm, self.config, self.scoring_data
        self.model.eval()
        hidden, i, children, samples = None, 0, [], []
        for _ in range(method.derive_samples):
            self.model.child = self.sample()
            total, tokens = 0.0, 0
            for _ in range(method.derive_batches):
                window = Window(*get_batch(data, i, cfg.bptt), hidden)
                loss = self.child_loss(window)
                total = None if loss is None or total is None else total + loss * window.inputs.numel()
                tokens += window.inputs.numel()
                hidden, i = window.next_hidden, i + cfg.bptt
                if i >= data.size(0) - 2:
                    i = 0
            loss = None if total is None else total / tokens
            children.append(self.model.child["recurrent"])
            ppl = None if loss is None else round(perplexity(loss), 4)
            samples.append({**self.fields(children[-1]), "valid_ppl": ppl, "reward": round(reward(loss), 6)})
        best = max(range(len(samples)), key=lambda k: (samples[k]["reward"], -k))
        return self.fields(children[best]), {"derived_samples": samples, "derived_best": best}
