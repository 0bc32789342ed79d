"""What a search algorithm is: its paper's settings, its own options and the parts of the search it owns.

The run (``loop.Search``) and the two optimisation steps (``bilevel.BiLevel``) are shared. An algorithm
(``darts.py``, ``gdas.py``, ``pc_darts.py``, ``pdarts.py``, ``ednas.py``) is one subclass of
``SearchAlgorithm`` that says what differs in its paper: the loop settings it uses by default, its own
options (declared, so that the command line and the search record come from them), the supernet of each
stage, the epoch's training pass, the step and the architecture gradient, per-epoch schedules, how
candidates shrink between stages and how the genotype is derived (per epoch, and once more at the end with
the data at hand). The base class is DARTS first order: one stage, alpha step then weights step, softmax
edges, Sec. 2.4's derivation.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..harness import distributed
from ..harness.train import device_for_run
from .bilevel import frozen
from .supernet import SearchNetwork, Softmax, Supernet, node_slices

if TYPE_CHECKING:
    from .bilevel import Batch, BiLevel
    from .loop import Search

#: per cell type, one list of candidate operation names per edge
Candidates = Dict[str, List[List[str]]]


@dataclass
class SearchConfig:
    """The settings of the shared loop; ``None`` fields take the algorithm's paper defaults for the dataset
    searched (``with_defaults``)."""

    dataset: str = "cifar10"
    data_dir: str = "data"
    epochs: Optional[int] = None  # per stage, for algorithms with stages (P-DARTS)
    batch_size: Optional[int] = None
    init_channels: Optional[int] = None
    layers: Optional[int] = None
    nodes: Optional[int] = None
    seed: int = 2
    train_portion: Optional[float] = None
    lr: Optional[float] = None
    lr_min: Optional[float] = None
    momentum: Optional[float] = None
    nesterov: Optional[bool] = None
    weight_decay: Optional[float] = None
    grad_clip: Optional[float] = None
    arch_lr: Optional[float] = None
    arch_betas: Optional[Tuple[float, float]] = None
    arch_weight_decay: Optional[float] = None
    arch_warmup: Optional[int] = None  # epochs (of each stage) of weights-only training before alpha moves
    arch_grad_clip: Optional[float] = None  # clip alpha's gradient norm (0: no clipping)
    lr_warmup: Optional[int] = None  # epochs of linear learning-rate warm-up before the cosine schedule
    # ImageNet: the share of every class that trains the weights, and the share that trains the architecture
    imagenet_sample: Optional[Tuple[float, float]] = None
    # language-model searches (``--dataset ptb``): width, BPTT length, the five dropouts (output, hidden,
    # input, embedding output, embedding words), temporal activation regularisation, batches per epoch (0: all)
    nhid: Optional[int] = None
    bptt: Optional[int] = None
    dropouts: Optional[Tuple[float, float, float, float, float]] = None
    tar: Optional[float] = None
    max_batches: int = 0
    # the collapse monitor (``hessian.py``): the Hessian's dominant eigenvalue every K epochs (0: never), and
    # DARTS-ES on it ("off", "paper" or "code")
    hessian_every: Optional[int] = None
    early_stop: str = "off"
    sync_bn: bool = False  # under torchrun, batch norm over the whole batch instead of each process's share
    num_workers: int = 2
    channels_last: bool = True  # activations in NHWC: same math, faster depthwise convolutions on CPU
    device: str = "cuda" if torch.cuda.is_available() else "cpu"

    def check(self) -> None:
        """Refuse settings no supernet can run, with the flag to change."""
        for name in ("epochs", "batch_size", "init_channels", "layers", "nhid", "bptt", "max_batches", "hessian_every"):
            value = getattr(self, name)
            if value is None:
                continue
            if value < (0 if name in ("epochs", "max_batches", "hessian_every") else 1):
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.dropouts is not None and (len(self.dropouts) != 5 or any(not 0 <= p < 1 for p in self.dropouts)):
            raise ValueError(f"--dropouts {','.join(map(str, self.dropouts))}: expected 5 probabilities in [0, 1)")
        if self.init_channels % 4:
            raise ValueError(f"--init-channels {self.init_channels}: use a multiple of 4 (partial channels and "
                             "factorized reductions split the channels)")
        device_for_run(self.device)  # one that is here


#: Defaults of the bi-level loop (DARTS's ``train_search.py``); an algorithm overrides its paper's.
LOOP_DEFAULTS = dict(epochs=50, batch_size=64, init_channels=16, layers=8, nodes=4, train_portion=0.5, lr=0.025,
                     lr_min=0.001, momentum=0.9, nesterov=False, weight_decay=3e-4, grad_clip=5.0, arch_lr=3e-4,
                     arch_betas=(0.5, 0.999), arch_weight_decay=1e-3, arch_warmup=0,
                     arch_grad_clip=0.0, lr_warmup=0, imagenet_sample=(0.1, 0.025), hessian_every=5)
#: The recurrent-cell search on PTB (DARTS ``rnn/train_search.py``, Sec. 3.2 / A.1.2): plain SGD at a constant
#: lr 20 (scaled by the window's length), clip 0.25, weight decay 5e-7; alpha by Adam 3e-3 (PyTorch's betas,
#: weight decay 1e-3); width 300, BPTT 35, the DARTS dropouts, TAR 1e-3. GDAS's RNN search kept them.
PTB_DEFAULTS = dict(epochs=50, batch_size=256, lr=20.0, lr_min=20.0, momentum=0.0, weight_decay=5e-7, grad_clip=0.25,
                    arch_lr=3e-3, arch_betas=(0.9, 0.999), arch_weight_decay=1e-3, nhid=300, bptt=35,
                    dropouts=(0.75, 0.25, 0.75, 0.2, 0.0), tar=1e-3)


@dataclass(frozen=True)
class Option:
    """One setting of an algorithm: a constructor argument, a ``nas-zoo search ALGO`` flag, a record field.
    Tuples are given on the command line as comma-separated values (``--add-layers 0,6,12``)."""

    name: str
    default: Any
    help: str

    def parse(self, text: str) -> Any:
        kind = type(self.default[0])
        try:
            return tuple(kind(x) for x in text.split(","))
        except ValueError:
            raise ValueError(f"--{self.name.replace('_', '-')} {text!r}: expected comma-separated "
                             f"{kind.__name__} values like {','.join(map(str, self.default))}") from None


class SearchAlgorithm:
    """One search method on the shared parts; DARTS first order unless a subclass says otherwise."""

    name = ""
    #: the paper's loop settings (``SearchConfig`` fields), over ``LOOP_DEFAULTS``
    defaults: Dict[str, Any] = {}
    #: the algorithm's own settings, each a constructor argument and a command-line flag
    options: Tuple[Option, ...] = ()
    #: how the derived genotype is evaluated (the record's ``evaluations``)
    evaluation = dict(network="cifar", C=36, layers=20)
    #: the paper's ImageNet search, if it has one: loop settings, options and ``evaluation`` over the above
    imagenet: Optional[Dict[str, Any]] = None
    #: the paper's recurrent-cell search on PTB, if it has one: what differs from ``PTB_DEFAULTS``
    ptb: Optional[Dict[str, Any]] = None
    stages = 1
    #: alpha weights the operations and follows the validation loss's gradient (not EDNAS's sampling policies):
    #: the collapse monitor (``hessian.py``) applies
    differentiable = True
    #: whether it runs under torchrun: its steps go through ``BiLevel``'s, which average every gradient over the
    #: ranks (an algorithm with its own passes says False until they do)
    several_processes = True

    def __init__(self, **settings):
        declared = {o.name: o.default for o in self.options}
        unknown = set(settings) - set(declared)
        if unknown:
            raise TypeError(f"{self.name} takes no option {sorted(unknown)[0]!r}; its options: "
                            f"{', '.join(declared) or 'none'}")
        self.given = set(settings)  # the rest follow the paper on the dataset searched (``for_dataset``)
        for key, value in {**declared, **settings}.items():
            setattr(self, key, value)

    def settings(self) -> Dict[str, Any]:
        """The values of the declared options, read from the attributes the algorithm runs with."""
        return {o.name: getattr(self, o.name) for o in self.options}

    def paper(self, dataset: str) -> Dict[str, Any]:
        """The paper's settings for a search on ``dataset``: loop settings, option values, ``evaluation``; the
        collapse monitor off where there is no alpha."""
        settings = self._paper(dataset)
        return settings if self.differentiable else {**settings, "hessian_every": 0}

    def _paper(self, dataset: str) -> Dict[str, Any]:
        if dataset == "wt2":
            raise ValueError("--dataset wt2: the papers search recurrent cells on ptb and transfer them to wt2; "
                             "use --dataset ptb")
        if dataset == "ptb":
            if self.ptb is None:
                raise ValueError(f"--dataset ptb: {self.name}'s paper has no recurrent-cell search; use darts, gdas "
                                 "or ednas")
            return {**LOOP_DEFAULTS, **PTB_DEFAULTS, "evaluation": {}, **self.ptb}
        if dataset != "imagenet":
            return {**LOOP_DEFAULTS, **self.defaults, "evaluation": self.evaluation}
        if self.imagenet is None:
            raise ValueError(f"--dataset imagenet: {self.name}'s paper has no ImageNet search; use cifar10 or "
                             "cifar100")
        return {**LOOP_DEFAULTS, **self.defaults, "evaluation": self.evaluation, **self.imagenet}

    def for_dataset(self, dataset: str) -> None:
        """Options the caller left unset take the paper's value for ``dataset`` (PC-DARTS's K=2 on ImageNet)."""
        paper = self.paper(dataset)
        for o in self.options:
            if o.name not in self.given:
                setattr(self, o.name, paper.get(o.name, o.default))

    @property
    def label(self) -> str:
        """The variant's name, as used in genotype names (``darts_2nd``, ``gdas_frc``)."""
        return self.name

    # -- the supernet ----------------------------------------------------------------------------------
    def network(self, config: SearchConfig, num_classes: int, stage: int = 0,
                candidates: Optional[Candidates] = None) -> SearchNetwork:
        """The supernet of ``stage`` (a new one per stage), on the candidates carried from the last stage."""
        return SearchNetwork(config.init_channels, num_classes, config.layers, config.nodes, candidates=candidates)

    def describe_stage(self, config: SearchConfig, stage: int) -> Dict[str, Any]:
        """What the record notes about a stage beside its cells, width and candidates."""
        return {}

    def next_candidates(self, model: SearchNetwork, stage: int) -> Candidates:
        """The candidates the stage after ``stage`` searches (algorithms with stages only)."""
        raise NotImplementedError(f"{self.name} has one stage")

    # -- one epoch, one step ---------------------------------------------------------------------------
    def weights_lr(self, config: SearchConfig, epoch: int) -> float:
        """The weights' learning rate in ``epoch`` (0-based) of a stage: ``lr * (epoch + 1) / lr_warmup``
        during the warm-up (PC-DARTS ``train_search_imagenet.py``), then cosine annealing from ``lr`` to
        ``lr_min`` (DARTS's ``CosineAnnealingLR``, in closed form as the authors' PyTorch computed it)."""
        if epoch < config.lr_warmup:
            return config.lr * (epoch + 1) / config.lr_warmup
        return config.lr_min + (config.lr - config.lr_min) * (1 + math.cos(math.pi * epoch / config.epochs)) / 2

    def train_epoch(self, run: "Search", epoch: int, advance: Callable[[], None]) -> Dict[str, Any]:
        """One epoch's training and its measure on the architecture part; returns the epoch's statistics
        (``train_loss``, ``train_acc``, ``valid_loss``, ``valid_acc`` and what else the record should note).
        DARTS Alg. 1: per batch of the weights part one ``step`` (alpha on a batch of the architecture part
        after the warm-up, then the weights), then the supernet on the architecture part. ``advance`` ticks
        the progress bar once per weights step."""
        seed = run.stage * run.config.epochs + epoch
        search_arch = epoch >= run.config.arch_warmup
        valid_batches = iter(run.loader(run.data.valid, seed + 10_000))
        totals = [0.0, 0.0, 0]
        run.model.train()
        for step, batch in enumerate(run.loader(run.data.train, seed)):
            train = run.bilevel.batch(batch)
            valid = None
            if search_arch:
                try:
                    valid = run.bilevel.batch(next(valid_batches))
                except StopIteration:  # the architecture's part is the smaller (ImageNet): go round it again
                    valid_batches = iter(run.loader(run.data.valid, seed + 10_000 + step * run.config.batch_size))
                    valid = run.bilevel.batch(next(valid_batches))
            loss, acc = run.bilevel.step(train, valid)
            n = len(train[1])
            totals[0] += loss * n
            totals[1] += acc * n
            totals[2] += n
            advance()
        loss, acc, n = distributed.sum_values(totals, run.bilevel.device)
        return {"train_loss": loss / n, "train_acc": acc / n, **run.validate()}

    def start_epoch(self, model: SearchNetwork, config: SearchConfig, stage: int, epoch: int) -> Dict[str, Any]:
        """Per-epoch schedule of the algorithm (GDAS's tau); returns what the record should note."""
        return {}

    def step(self, search: "BiLevel", train: "Batch", valid: Optional["Batch"]) -> Tuple[float, float]:
        """One search step (DARTS Alg. 1): alpha on ``valid`` (None during a warm-up), then the weights on
        ``train``; returns the training (loss, accuracy)."""
        if valid is not None:
            search.arch_step(self.arch_gradient(search, train, valid))
        return search.weights_step(train)

    def arch_gradient(self, search: "BiLevel", train: "Batch", valid: "Batch") -> Sequence[torch.Tensor]:
        """The first-order architecture gradient: d L_val(w, alpha) / d alpha (DARTS eq. 6 with xi = 0)."""
        with frozen(search.weights):
            return search.grad(search.loss(valid), search.alphas)

    # -- the genotype ----------------------------------------------------------------------------------
    def derive(self, model: SearchNetwork) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """The genotype's cell fields (``normal``, ``reduce``, concats) and what the record notes about them."""
        cells = {t: strongest_inputs(model.arch.alphas[t].softmax(-1), model.candidates[t], model.nodes)
                 for t in model.cell_types}
        return cell_fields(cells, model.nodes), {}

    def operation_weights(self, model: Supernet) -> Dict[str, List[List[float]]]:
        """Per searched cell type, each edge's weights over its candidates, as the record keeps them every epoch
        (the report's heat maps): softmax(alpha), to 4 decimals: DARTS eq. 2's mixing weights, the distribution of
        GDAS's hard sample (Gumbel-max), PC-DARTS's weights before its edge normalisation, EDNAS's operation policy."""
        return {t: [[round(w, 4) for w in row] for row in model.arch.alphas[t].detach().softmax(-1).cpu().tolist()]
                for t in model.cell_types}

    def conclude(self, run: "Search") -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
        """The final genotype when the algorithm derives it with data after the last epoch (EDNAS keeps the
        best of sampled children on the architecture part), as ``derive`` returns it; None: the last
        epoch's ``derive``. Runs after the last checkpoint, from its RNG state, so a resume repeats it."""
        return None

    # -- the recurrent cell (``--dataset ptb``, ``recurrent.py``) -----------------------------------------------
    def recurrent_mixing(self) -> Softmax:
        """How the recurrent search cell mixes its operations: DARTS eq. 2's softmax."""
        return Softmax()

    def derive_recurrent(self, model: Supernet) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """The recurrent genotype's fields and the record's notes: DARTS's ``RNNModelSearch.genotype``."""
        steps = strongest_predecessors(model.arch.alphas["recurrent"].softmax(-1), model.candidates["recurrent"],
                                       model.nodes)
        return {"recurrent": [list(s) for s in steps], "concat": list(range(1, model.nodes + 1))}, {}


def strongest_predecessors(weights: torch.Tensor, candidates: Sequence[Sequence[str]],
                           steps: int) -> List[Tuple[str, int]]:
    """DARTS's recurrent derivation (``rnn/model_search.py``): for each step the one predecessor whose
    strongest operation other than ``none`` weighs most, with that operation; ties go to the earlier state
    or operation. ``weights`` is (edges x candidates), step i's rows are the i + 1 states before it."""
    weights = without_none(weights, candidates)
    cell, start = [], 0
    for i in range(steps):
        rows = weights[start:start + i + 1]
        j = int(rows.max(-1).values.argmax())
        cell.append((candidates[start + j][int(rows[j].argmax())], j))
        start += i + 1
    return cell


def strongest_inputs(weights: torch.Tensor, candidates: Sequence[Sequence[str]], nodes: int) -> List[Tuple[str, int]]:
    """DARTS Sec. 2.4 (``model_search.Network.genotype``): for each node the two inputs whose strongest
    operation other than ``none`` weighs most, each with that operation; ties go to the earlier edge or
    operation. ``weights`` is (edges x candidates), ``candidates`` names each edge's columns."""
    weights = without_none(weights, candidates)
    cell = []
    for rows in node_slices(nodes):
        edges = range(rows.start, rows.stop)
        for e in sorted(edges, key=lambda e: -weights[e].max().item())[:2]:
            cell.append((candidates[e][int(weights[e].argmax())], e - rows.start))
    return cell


def without_none(weights: torch.Tensor, candidates: Sequence[Sequence[str]]) -> torch.Tensor:
    """A float64 CPU copy of ``weights`` with every ``none`` column at -1, below any real weight."""
    weights = weights.detach().double().cpu().clone()
    for e, names in enumerate(candidates):
        if "none" in names:
            weights[e, names.index("none")] = -1.0
    return weights


def cell_fields(cells: Dict[str, List[Tuple[str, int]]], nodes: int) -> Dict[str, Any]:
    """Genotype record fields from the derived cells; a type that was not searched (GDAS's fixed reduction
    cell) is ``None``."""
    concat = list(range(2, nodes + 2))
    return {"normal": [list(e) for e in cells["normal"]], "normal_concat": concat,
            "reduce": [list(e) for e in cells["reduce"]] if "reduce" in cells else None, "reduce_concat": concat}


def with_defaults(algorithm: SearchAlgorithm, config: SearchConfig) -> SearchConfig:
    """``config`` with its unset (None) fields filled from the algorithm's paper settings for its dataset."""
    fields = {f.name for f in dataclasses.fields(config)}
    filled = {key: value for key, value in algorithm.paper(config.dataset).items()
              if key in fields and getattr(config, key) is None}
    return dataclasses.replace(config, **filled)


def network_stem(config: SearchConfig) -> str:
    """The supernet's stem for the dataset searched (``supernet.search_stem``)."""
    return "imagenet" if config.dataset == "imagenet" else "cifar"

