"""EDNAS: Efficient Decoupled Neural Architecture Search by Structure and Operation Sampling (Lee, Kim &
Han, arXiv:1910.10397).

Not a gradient through alpha: two kinds of policy vectors per cell type, a structure policy per node over
the unordered pairs of its possible inputs (node 0 always takes the two cell inputs) and an operation
policy per edge over the 7 operations (no ``none``), sample a child network; only the child's chosen
operations on its chosen edges run (``Mix.index``, None for an edge not chosen). Each epoch is a pass over
the weights part (80% of the training set) training the shared weights on sampled children, then a pass over
the architecture part (20%) training the policies by REINFORCE: per batch a new child, its accuracy as the
reward, an exponential moving-average baseline (decay 0.99, updated before it is subtracted) and the
child's log-probability, ``loss = -(reward - baseline) * log p(child)`` by Adam. At the end 100 children are
sampled, each scored on a batch of the architecture part, and the best is the genotype (``conclude``); the
genotype of every epoch is the policies' most likely child.

Recurrent cells on Penn Treebank (``--dataset ptb``) are ``ednas_rnn.py``, on the policy and REINFORCE parts here.

Everything follows the authors' ``EDNAS_on_CIFAR-10`` (logue311/EDNAS at eed815b): ``model_search.py``
(``Network.sample_new_architecture``, ``edge_comb_dict``, ``MixedOp.forward``), ``architect.py``
(``_backward_step_policy_rl``), ``train_search.py`` (``train``, ``train_arch`` in eval mode,
``best_arch_search``; 300 epochs, batch 128, SGD with Nesterov momentum, lr 0.05 cosine to 0.001, wd 3e-4,
clip 5; Adam 3.5e-4, betas (0.5, 0.999), wd 1e-3). ImageNet follows ``EDNAS_on_ImageNet_horovod``: 5 nodes,
C=48 with a stem of width C and BNs without affine parameters (``model_search.py``), batch 200 for the
weights and 50 for the policies, a new child every 20 weights steps, 50 epochs of SGD (no Nesterov, wd 3e-5,
no clipping) at lr 0.05 times 1, 0.5, 0.1, 0.01, 0.001 from epochs 0, 10, 20, 30, 40 (``adjust_learning_rate``
on one GPU, where its warm-up is flat), each child scored on 10 batches at the end. Their ``random_split`` of
the whole training set is our seeded per-class 80/20 split (recorded); their colour jitter is left out (the
ImageNet search transform is the one PC-DARTS's and BNAS-v2's searches share, ``data.py``).

By default the paper's method; ``--authors-code`` reproduces two quirks of the released code: the CIFAR
code hands the normal-cell sample to the reduction cells and vice versa (``Network.forward``; the
genotype's ``normal`` is then the sample that ran in the reduction cells, as their ``best_arch_search``
reports it; the ImageNet copy fixes this), and both take the log-probability through a second softmax
(``CrossEntropyLoss`` applied to the probabilities). Unlike their PyTorch 0.3 ``zero_grad``, which kept a
zero gradient, operations a child does not use get no gradient at all, hence no weight decay or momentum step.
"""
import itertools
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..models.networks import ImageNetStem
from ..models.ops import PRIMITIVES
from .algorithm import Option, SearchAlgorithm, SearchConfig, cell_fields, network_stem
from .bilevel import Batch, BiLevel
from .supernet import Mix, SearchNetwork, Softmax, num_edges

#: the authors' ``genotypes.PRIMITIVES``: DARTS's operations without ``none``, in DARTS's order
OPERATIONS = [p for p in PRIMITIVES if p != "none"]
BASELINE_DECAY = 0.99
#: ImageNet: (first epoch, factor of lr), the authors' ``adjust_learning_rate``
IMAGENET_LR_STEPS = ((40, 0.001), (30, 0.01), (20, 0.1), (10, 0.5), (0, 1.0))


def input_pairs(node: int) -> List[Tuple[int, int]]:
    """The unordered input pairs node ``node`` chooses from, in the authors' ``edge_comb_dict`` order:
    (0, 1), (0, 2), (1, 2), (0, 3) ...; node 0 has only (0, 1)."""
    return [(a, b) for b in range(1, node + 2) for a in range(b)]


class CellSample(NamedTuple):
    """One cell type's child: per node from the second on, the index of its input pair (``input_pairs``),
    and per node and chosen input (in input order), the operation's index."""

    pairs: Tuple[int, ...]
    ops: Tuple[int, ...]

    def edges(self) -> List[int]:
        """The chosen edges, node by node."""
        inputs = [(0, 1)] + [input_pairs(i)[p] for i, p in enumerate(self.pairs, 1)]
        return [num_edges(i) + j for i, pair in enumerate(inputs) for j in pair]

    def mix(self, edges: int, candidates: int, device: torch.device) -> Mix:
        """The child as a cell's ``Mix``: its operations one-hot, the others' edges not run."""
        chosen, index = self.edges(), [None] * edges
        for e, op in zip(chosen, self.ops):
            index[e] = op
        weights = torch.zeros(edges, candidates, device=device)
        weights[chosen, list(self.ops)] = 1.0
        return Mix(weights, index)

    def cell(self, candidates: Sequence[Sequence[str]]) -> List[Tuple[str, int]]:
        """The genotype cell: (operation, input) per chosen edge, node by node."""
        nodes = len(self.pairs) + 1
        starts = [num_edges(i) for i in range(nodes) for _ in range(2)]
        return [(candidates[e][op], e - start) for e, op, start in zip(self.edges(), self.ops, starts)]


def sample_cell(policy: Mapping[str, torch.Tensor], nodes: int, kind=CellSample) -> CellSample:
    """Draw a child of one cell type from its policies (on the CPU generator, so a seed fixes it on any
    device): each node's inputs, then an operation on each chosen edge. ``kind``: the sample's type, a pair
    (the draws of ``inputs1`` .. , the chosen edges' operations) with ``edges()``: ``CellSample``, or
    ``ednas_rnn.StepSample`` for a recurrent cell."""
    draws = tuple(int(torch.multinomial(policy[f"inputs{i}"].detach().softmax(-1).cpu(), 1)) for i in range(1, nodes))
    ops = torch.multinomial(policy["alphas"].detach().softmax(-1).cpu(), 1)[:, 0]  # one per edge; chosen ones kept
    return kind(draws, tuple(ops[kind(draws, ()).edges()].tolist()))


def log_prob(policy: Mapping[str, torch.Tensor], sample: CellSample, double_softmax: bool = False) -> torch.Tensor:
    """log p(sample) under the policies, differentiable in them; ``double_softmax`` takes the log-softmax of
    the probabilities instead, as the authors' ``CrossEntropyLoss(softmax(theta), k)`` does."""
    def log_softmax(theta: torch.Tensor) -> torch.Tensor:
        return (theta.softmax(-1) if double_softmax else theta).log_softmax(-1)

    draws, ops = sample  # as ``sample_cell`` returns them
    structure = sum((log_softmax(policy[f"inputs{i}"])[d] for i, d in enumerate(draws, 1)),
                    torch.zeros((), device=policy["alphas"].device))
    return structure + log_softmax(policy["alphas"])[sample.edges(), list(ops)].sum()


def entropy(theta: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) of softmax(theta) along the last dimension."""
    return -(theta.softmax(-1) * theta.log_softmax(-1)).sum(-1)


class Policies(Softmax):
    """EDNAS's policy vectors of a cell type: ``alphas`` (edges x operations) and ``inputs{i}`` (the input
    pairs of node i >= 1), initialised as DARTS's alpha; the network runs the sampled child instead of a mix
    (``EdnasNetwork.mixes``)."""

    def __init__(self, nodes: int):
        self.nodes = nodes

    def choices(self, node: int) -> int:
        """How many input choices node ``node`` has: its input pairs."""
        return len(input_pairs(node))

    def parameter_shapes(self, edges: int, candidates: int) -> Dict[str, Tuple[int, ...]]:
        return {"alphas": (edges, candidates), **{f"inputs{i}": (self.choices(i),) for i in range(1, self.nodes)}}


class EdnasNetwork(SearchNetwork):
    """The DARTS supernet on EDNAS's 7 operations running one sampled ``child`` (per cell type, set by the
    algorithm) and holding the reward ``baseline`` (a buffer, so a checkpoint keeps it). ``swap``: the
    authors' CIFAR code, normal cells run the reduce sample and reduction cells the normal one. The
    ImageNet stem is the authors': width C, not 3C, its BNs without affine parameters."""

    def __init__(self, C: int, num_classes: int, layers: int, nodes: int, candidates=None, stem: str = "cifar",
                 swap: bool = False):
        every = {t: [list(OPERATIONS)] * num_edges(nodes) for t in ("normal", "reduce")}
        super().__init__(C, num_classes, layers, nodes, Policies(nodes), candidates or every, stem=stem)
        self.swap = swap
        self.child: Dict[str, CellSample] = {}
        self.register_buffer("baseline", torch.zeros(()))

    def make_stem(self, kind: str, in_chans: int, C: int) -> nn.Module:
        return ImageNetStem(in_chans, C, affine=False) if kind == "imagenet" else super().make_stem(kind, in_chans, C)

    def mixes(self) -> Dict[str, Mix]:
        if not self.child:
            raise RuntimeError("EdnasNetwork runs a sampled child: set .child (Ednas.sample) before a forward pass")
        edges, device = num_edges(self.nodes), self.classifier.weight.device
        mixes = {t: self.child[t].mix(edges, len(self.candidates[t][0]), device) for t in self.cell_types}
        return {"normal": mixes["reduce"], "reduce": mixes["normal"]} if self.swap else mixes


def batches(run, batch_size: int, seed: int) -> Iterator:
    """The architecture part's batches without end, reshuffled (seeded) at every pass. A pass's short last
    batch is skipped: their ``best_arch_search`` scores every child on a full batch (the first of a fresh
    shuffle), unless the part is smaller than one batch."""
    full = min(batch_size, len(run.data.valid))
    for n in itertools.count():
        yield from (b for b in run.loader(run.data.valid, seed + n, batch_size=batch_size) if len(b[1]) == full)


class Ednas(SearchAlgorithm):
    name = "ednas"
    defaults = dict(epochs=300, batch_size=128, lr=0.05, lr_min=0.001, nesterov=True, arch_lr=3.5e-4,
                    train_portion=0.8)
    differentiable = False  # policies, not alpha: no collapse monitor
    options = (Option("authors_code", False, "the released code's quirks: normal/reduce samples swapped (CIFAR), "
                                             "log-probability through a double softmax"),
               Option("child_steps", 1, "weights steps per sampled child"),
               Option("policy_batch_size", 0, "batch size of the policy pass and the final scoring (0: --batch-size; "
                                              "ptb scores at half of it)"),
               Option("derive_samples", 100, "children sampled at the end; the best on the architecture part is kept"),
               Option("derive_batches", 1, "batches of the architecture part that score each of them"))
    evaluation = dict(network="cifar", C=36, layers=20)
    several_processes = False  # its REINFORCE pass does not average the policies' gradients over ranks yet
    imagenet = dict(init_channels=48, nodes=5, batch_size=200, epochs=50, lr=0.05, nesterov=False, weight_decay=3e-5,
                    grad_clip=0.0, imagenet_sample=(0.8, 0.2), policy_batch_size=50, child_steps=20,
                    derive_batches=10, evaluation=dict(network="imagenet", C=48, layers=14))
    ptb = dict(epochs=150, arch_lr=3.5e-4)  # EDNAS_on_Penn_Treebank/train_search.py; the run: ednas_rnn.py

    def network(self, config: SearchConfig, num_classes: int, stage: int = 0, candidates=None) -> SearchNetwork:
        return EdnasNetwork(config.init_channels, num_classes, config.layers, config.nodes, candidates,
                            network_stem(config), swap=self.authors_code and config.dataset != "imagenet")

    def weights_lr(self, config: SearchConfig, epoch: int) -> float:
        if config.dataset != "imagenet":
            return super().weights_lr(config, epoch)
        return config.lr * next(factor for start, factor in IMAGENET_LR_STEPS if epoch >= start)

    # -- sampling and the policy gradient -------------------------------------------------------------
    def sample(self, model: EdnasNetwork) -> Dict[str, CellSample]:
        return {t: sample_cell(model.arch.of(t), model.nodes) for t in model.cell_types}

    def log_prob(self, model: EdnasNetwork, child: Mapping[str, CellSample]) -> torch.Tensor:
        return sum(log_prob(model.arch.of(t), child[t], self.authors_code) for t in model.cell_types)

    def policy_loss(self, model: EdnasNetwork, child: Mapping[str, CellSample], reward: float) -> torch.Tensor:
        """REINFORCE (``architect._backward_step_policy_rl``): the baseline moves toward ``reward`` first,
        then ``-(reward - baseline) * log p(child)``."""
        model.baseline.mul_(BASELINE_DECAY).add_((1 - BASELINE_DECAY) * reward)
        return -(reward - model.baseline) * self.log_prob(model, child)

    # -- the two steps and one epoch ------------------------------------------------------------------
    def weights_step(self, search: BiLevel, batch: Batch, new_child: bool = True) -> Tuple[float, float]:
        """One step of the shared weights (the body of their ``train``): in train mode, on a new child when
        ``new_child``, SGD on the child's loss (``BiLevel.weights_step``); returns (loss, accuracy)."""
        search.model.train()
        if new_child:
            search.model.child = self.sample(search.model)
        return search.weights_step(batch)

    def policy_step(self, search: BiLevel, batch: Batch) -> Tuple[float, float]:
        """One REINFORCE step (the body of their ``train_arch`` with ``architect.step``): a new child in eval
        mode, its accuracy on ``batch`` the reward, one Adam step of the policies on ``policy_loss``; returns
        the child's summed loss and the reward. The child runs once, without a graph: the gradient is that
        of its log-probability alone (their code runs it twice, with a graph)."""
        model = search.model
        model.eval()
        model.child = self.sample(model)
        images, labels = batch
        with torch.no_grad():
            logits = model(images)
        reward = (logits.argmax(-1) == labels).float().mean().item()
        search.arch_step(search.grad(self.policy_loss(model, model.child, reward), search.alphas))
        return F.cross_entropy(logits, labels, reduction="sum").item(), reward

    def train_epoch(self, run, epoch: int, advance) -> Dict[str, Any]:
        """The weights on sampled children over the weights part (``train``), then the policies over the
        architecture part (``train_arch``); its rewards are the epoch's ``valid_acc``."""
        bilevel = run.bilevel
        train, valid = [0.0, 0.0, 0], [0.0, 0.0, 0]
        for step, batch in enumerate(run.loader(run.data.train, epoch)):
            images, labels = bilevel.batch(batch)
            loss, acc = self.weights_step(bilevel, (images, labels), new_child=step % self.child_steps == 0)
            train = [train[0] + loss * len(labels), train[1] + acc * len(labels), train[2] + len(labels)]
            advance()
        for batch in run.loader(run.data.valid, epoch + 10_000, batch_size=self.policy_batch_size or None):
            images, labels = bilevel.batch(batch)
            loss, reward = self.policy_step(bilevel, (images, labels))
            valid = [valid[0] + loss, valid[1] + 100 * reward * len(labels), valid[2] + len(labels)]
        return {"train_loss": train[0] / train[2], "train_acc": train[1] / train[2], "valid_loss": valid[0] / valid[2],
                "valid_acc": valid[1] / valid[2], "reward_baseline": run.model.baseline.item(),
                "policy_entropy": self.entropies(run.model)}

    @staticmethod
    def entropies(model: EdnasNetwork) -> Dict[str, Dict[str, Any]]:
        """Per cell type, the operation policies' mean entropy and each node's input-pair entropy (nats; a
        collapsing policy goes to 0, uniform is log 7 = 1.946 per edge)."""
        arch = model.arch
        return {t: {"operations": round(entropy(arch.alphas[t]).mean().item(), 4),
                    "inputs": [round(entropy(getattr(arch, f"inputs{i}")[t]).item(), 4) for i in range(1, model.nodes)]}
                for t in model.cell_types}

    # -- the genotype -----------------------------------------------------------------------------------
    def derive(self, model: EdnasNetwork):
        """The policies' most likely child: each node's likeliest input pair, each chosen edge's likeliest
        operation."""
        cells = {}
        for t in model.cell_types:
            policy = model.arch.of(t)
            pairs = tuple(int(policy[f"inputs{i}"].argmax()) for i in range(1, model.nodes))
            ops = policy["alphas"].argmax(-1)[CellSample(pairs, ()).edges()]
            cells[t] = CellSample(pairs, tuple(ops.tolist())).cell(model.candidates[t])
        return cell_fields(cells, model.nodes), {}

    @torch.no_grad()
    def conclude(self, run):
        """``best_arch_search``: ``derive_samples`` children, each scored (eval mode) on ``derive_batches``
        batches of the architecture part; the first of the best is the genotype. All go to the record."""
        model, bilevel = run.model, run.bilevel
        model.eval()
        data = batches(run, self.policy_batch_size or run.config.batch_size, 20_000)
        children, scores = [], []
        for _ in range(self.derive_samples):
            model.child = self.sample(model)
            correct = seen = 0
            for batch in itertools.islice(data, self.derive_batches):
                images, labels = bilevel.batch(batch)
                correct += (model(images).argmax(-1) == labels).sum().item()
                seen += len(labels)
            children.append({t: model.child[t].cell(model.candidates[t]) for t in model.cell_types})
            scores.append(100 * correct / seen)
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        samples = [{**{t: [list(e) for e in cell] for t, cell in child.items()}, "valid_acc": round(score, 4)}
                   for child, score in zip(children, scores)]
        return cell_fields(children[best], model.nodes), {"derived_samples": samples, "derived_best": best}
