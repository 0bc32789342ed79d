"""Train and evaluate the DARTS language models with the papers' recipe (quark0/darts rnn/train.py).

The recipe (DARTS Sec. 3.2 / A.1.2, after AWD-LSTM, Merity et al. 2018): SGD at lr 20, weight decay, gradient
norm clipped to 0.25, truncated BPTT on windows of random length (N(35, 5), its mean halved 5% of the time,
at least 5 and at most 35 + 20; the learning rate scaled by length / 35), temporal activation regularisation
(beta * |h_t - h_{t-1}|^2), and the switch to averaged SGD (ASGD) once the validation loss is worse than
every one of ``nonmono`` epochs before (the non-monotonic trigger); under ASGD, validation uses the
averaged weights. Validation runs at batch 10, test at batch 1, as in the original.

A run (``harness.run``) writes ``OUT/checkpoint`` and ``OUT/metrics.jsonl`` after every epoch (weights,
optimizer, RNG streams: ``--resume`` continues the exact same run) and ``OUT/best`` whenever validation
improves (the weights that ``evaluate`` reads).
"""
import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..harness.checkpoint import find_checkpoint, load_fitting, load_state, load_weights, save_checkpoint
from ..harness.run import Display, Run, saved_settings, to_stderr
from ..models.rnn import CORPUS_SETTINGS, RNNModel, paper_setting
from ..registry.genotype import RecurrentGenotype, parse_genotypes
from ..resolver import resolve
from ..weights.convert import convert_state_dict
from .corpus import Corpus, batchify, get_batch, load_corpus


class LMError(ValueError):
    """A language-model run that cannot start: bad settings, a wrong model name, a checkpoint that does not fit."""


@dataclass
class LMConfig:
    """rnn/train.py's flags and defaults (PTB); ``CORPUS_SETTINGS`` and the paper's evaluation override them."""

    epochs: int = 8000
    batch_size: int = 64
    lr: float = 20.0
    clip: float = 0.25
    bptt: int = 35
    max_seq_len_delta: int = 20
    nhid: int = 850
    emsize: int = 0  # 0: nhid (the original asserts emsize == nhid == nhidlast)
    dropout: float = 0.75
    dropouth: float = 0.25
    dropoutx: float = 0.75
    dropouti: float = 0.2
    dropoute: float = 0.1
    wdecay: float = 8e-7
    beta: float = 1e-3  # temporal activation regularisation (DARTS keeps AWD-LSTM's alpha at 0: left out)
    nonmono: int = 5
    seed: int = 1267
    eval_batch_size: int = 10
    test_batch_size: int = 1
    max_batches: int = 0  # batches per epoch; 0: the whole training split (set it for a short CPU budget)

    @classmethod
    def create(cls, setting: Dict[str, Any], overrides: Dict[str, Any]) -> "LMConfig":
        """The config from a paper setting and user overrides (rnn/train.py names), validated."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        values = {k: v for k, v in setting.items() if k in fields}
        for key, value in overrides.items():
            if key not in fields:
                raise LMError(f"unknown training setting {key!r}; known: {', '.join(fields)}")
            kind = fields[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                    (kind is int and value != int(value)):
                raise LMError(f"setting {key!r} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
            values[key] = kind(value)
        config = cls(**values)
        config.emsize = config.emsize or config.nhid
        for key in ("epochs", "batch_size", "bptt", "nhid", "nonmono", "eval_batch_size", "test_batch_size"):
            if getattr(config, key) <= 0:
                raise LMError(f"setting {key!r} must be positive, got {getattr(config, key)}")
        for key in ("dropout", "dropouth", "dropoutx", "dropouti", "dropoute"):
            if not 0 <= getattr(config, key) < 1:
                raise LMError(f"setting {key!r} must be a probability in [0, 1), got {getattr(config, key)}")
        if config.emsize != config.nhid:
            raise LMError(f"emsize {config.emsize} != nhid {config.nhid}: the DARTS cell reads the embedding, "
                          f"so both must be equal (set nhid alone)")
        return config

    def model_kwargs(self) -> Dict[str, Any]:
        return dict(nhid=self.nhid, dropout=self.dropout, dropouth=self.dropouth, dropoutx=self.dropoutx,
                    dropouti=self.dropouti, dropoute=self.dropoute)


def language_model(name: str, dataset: str) -> Tuple[str, RecurrentGenotype, Dict[str, Any]]:
    """(model name, cell, paper setting) of ``name`` (``nas_zoo.resolve``) on the corpus ``dataset``.

    A cell without a zoo model on ``dataset`` gets the corpus's settings (as DARTS transferred to WT2).
    """
    resolved = resolve(name, dataset)
    if dataset not in CORPUS_SETTINGS:
        raise LMError(f"unknown corpus {dataset!r}; language models train on {', '.join(CORPUS_SETTINGS)}")
    if resolved.model is not None:
        return resolved.model.name, resolved.genotype, dict(resolved.model.setting)
    return f"{resolved.genotype.name.lower()}_{dataset}", resolved.genotype, paper_setting(resolved.genotype, dataset)


def train_language_model(name: str, dataset: str, data_dir, out: Optional[Path] = None, resume: bool = False,
                         overrides: Optional[Dict[str, Any]] = None, log: Callable[[str], None] = to_stderr,
                         progress: bool = True) -> Dict[str, Any]:
    """Train ``name`` (a zoo language model, a recurrent cell or a genotype file) on ``dataset`` from the corpus
    in ``data_dir`` with the paper's recipe, ``overrides`` on top, into ``out`` (default ``runs/MODEL-DATASET``)."""
    model_name, genotype, setting = language_model(name, dataset)
    corpus = load_corpus(dataset, data_dir)
    out = Path(out or Path("runs") / f"{model_name}-{dataset}")
    result = train_lm(model_name, genotype, corpus, out, setting, overrides, resume, log, progress)
    log(f"{model_name} on {dataset}: best valid ppl {result['valid_ppl']:.2f}, test ppl {result['test_ppl']:.2f} "
        f"({out / 'best'})")
    return result


def evaluate_language_model(name: str, dataset: str, data_dir, checkpoint: Optional[Path] = None) -> Dict[str, Any]:
    """Validation and test perplexity, params and tokens/s of ``name`` on ``dataset``: the weights in
    ``checkpoint`` (checked to be that model), or the untrained model without one."""
    model_name, genotype, setting = language_model(name, dataset)
    corpus = load_corpus(dataset, data_dir)
    if checkpoint is None:
        result = evaluate_model(build_model(genotype, len(corpus.words), LMConfig.create(setting, {})), corpus,
                                name=model_name)
    else:
        result = evaluate_checkpoint(checkpoint, corpus)
        if result["model"] != model_name:
            raise LMError(f"{checkpoint} holds a {result['model']} model, not {model_name}")
    return {**result, "checkpoint": None if checkpoint is None else str(checkpoint),
            "threads": torch.get_num_threads()}


def build_model(genotype: RecurrentGenotype, ntoken: int, config: LMConfig) -> RNNModel:
    return RNNModel(genotype, ntoken, **config.model_kwargs())


def language_model_weights(state_dict: Dict[str, torch.Tensor], name: str, dataset: Optional[str] = None,
                           source: str = "the checkpoint") -> Tuple[str, RNNModel, Dict[str, Any]]:
    """The authors' language-model weights (``convert.read_checkpoint`` of DARTS's or EDNAS's ``model.pt``) in
    ``name``'s model: (the model's name, the model, its ``config.json``: model, corpus, genotype,
    ``ntoken``/``nhid``). ``hub.convert`` writes them; ``nas_zoo.create_model(name, **config["model_args"])``
    then ``load_weights(folder, model)`` reads them.

    The corpus is ``dataset``, else the one whose vocabulary size the embedding has.
    """
    if "encoder.weight" not in state_dict:
        raise LMError(f"{source}: no encoder.weight, so not the DARTS language model's weights")
    ntoken, nhid = state_dict["encoder.weight"].shape
    dataset = dataset or next((d for d, s in CORPUS_SETTINGS.items() if s["ntoken"] == ntoken), None)
    if dataset is None:
        raise LMError(f"{source}: its {ntoken:,}-word vocabulary is neither PTB's nor WT2's; pass the corpus "
                      f"(--dataset ptb|wt2)")
    model_name, genotype, _ = language_model(name, dataset)
    model = RNNModel(genotype, ntoken, nhid)
    try:
        load_fitting(convert_state_dict(state_dict, "darts_rnn", model), model, source)
    except KeyError as e:
        raise LMError(f"{source}: {e.args[0]}; is it a checkpoint of {genotype.name}?") from None
    config = dict(architecture=model_name, dataset=dataset, genotype=genotype.to_dict(),
                  model_args=dict(ntoken=ntoken, nhid=nhid))
    return model_name, model, config


@torch.no_grad()
def evaluate(model: RNNModel, data: torch.Tensor, bptt: int) -> Tuple[float, float]:
    """(mean loss per token, tokens/s) over a batchified split, carrying the state across windows.

    The loss is averaged as in the original: window losses weighted by length, divided by the split's
    rows (one more than the rows predicted), which keeps figures comparable with the papers'.
    """
    model.eval()
    total, hidden, start = 0.0, None, time.perf_counter()
    for i in range(0, data.size(0) - 1, bptt):
        inputs, targets = get_batch(data, i, bptt)
        logits, outputs = model(inputs, hidden)
        hidden = outputs[-1]
        total += F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1)).item() * len(inputs)
    seconds = time.perf_counter() - start
    return total / len(data), (data.size(0) - 1) * data.size(1) / seconds


def _make_optimizer(kind: str, model: RNNModel, config: LMConfig) -> torch.optim.Optimizer:
    if kind == "asgd":  # t0=0, lambd=0: a plain running average of the iterates from the switch on
        return torch.optim.ASGD(model.parameters(), lr=config.lr, t0=0, lambd=0.0, weight_decay=config.wdecay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.wdecay)


def switch_to_asgd(history: List[float], val_loss: float, nonmono: int) -> bool:
    """The non-monotonic trigger: validation is worse than the best of all but the last ``nonmono`` epochs."""
    return len(history) > nonmono and val_loss > min(history[:-nonmono])


def _sequence_length(config: LMConfig) -> int:
    """rnn/train.py's random BPTT length: N(bptt, 5), bptt halved 5% of the time, clipped to [5, bptt + delta]."""
    bptt = config.bptt if random.random() < 0.95 else config.bptt / 2.0
    return min(max(5, int(random.gauss(bptt, 5))), config.bptt + config.max_seq_len_delta)


def window_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, hidden: Optional[torch.Tensor],
                beta: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cross-entropy, cross-entropy + beta * TAR, the cell's outputs) of one window from state ``hidden``."""
    logits, outputs = model(inputs, hidden)
    raw_loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
    return raw_loss, raw_loss + beta * (outputs[1:] - outputs[:-1]).pow(2).mean(), outputs


def train_epoch(model: RNNModel, optimizer: torch.optim.Optimizer, data: torch.Tensor, config: LMConfig,
                display: Optional[Display] = None) -> float:
    """One pass over the batchified training split (or ``max_batches`` of it); returns the mean loss."""
    model.train()
    hidden, i, batches, total = None, 0, 0, 0.0
    while i < data.size(0) - 2 and batches < (config.max_batches or math.inf):
        seq_len = _sequence_length(config)
        raw_loss, loss, outputs = window_loss(model, *get_batch(data, i, seq_len), hidden, config.beta)
        hidden = outputs[-1].detach()  # truncated BPTT: the state flows on, its gradient does not
        if not math.isfinite(raw_loss.item()):
            raise LMError(f"training diverged (loss {raw_loss.item()}) at batch {batches}; resume from the last "
                          f"checkpoint with a lower lr or clip")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.param_groups[0]["lr"] = config.lr * seq_len / config.bptt  # longer windows, larger steps
        optimizer.step()
        optimizer.param_groups[0]["lr"] = config.lr
        total, batches, i = total + raw_loss.item(), batches + 1, i + seq_len
        if display is not None:
            display.advance(f"loss {raw_loss.item():.3f}", seq_len)
    return total / max(batches, 1)


class _Averaged:
    """Under ASGD, swap the averaged weights in (for validation and the best checkpoint), then back."""

    def __init__(self, model: RNNModel, optimizer: torch.optim.Optimizer):
        self.pairs = [(p, optimizer.state[p]["ax"]) for p in model.parameters()
                      if isinstance(optimizer, torch.optim.ASGD) and "ax" in optimizer.state[p]]

    def __enter__(self):
        self.saved = [p.detach().clone() for p, _ in self.pairs]
        with torch.no_grad():
            for p, ax in self.pairs:
                p.copy_(ax)

    def __exit__(self, *exc):
        with torch.no_grad():
            for (p, _), saved in zip(self.pairs, self.saved):
                p.copy_(saved)


def _run_info(name: str, dataset: str, genotype: RecurrentGenotype, corpus: Corpus, config: LMConfig) -> Dict:
    return dict(model=name, dataset=dataset, genotype=genotype.to_dict(), vocabulary=corpus.words,
                config=dataclasses.asdict(config), threads=torch.get_num_threads())


def train_lm(name: str, genotype: RecurrentGenotype, corpus: Corpus, out: Path, setting: Dict[str, Any],
             overrides: Optional[Dict[str, Any]] = None, resume: bool = False, log: Callable[[str], None] = to_stderr,
             progress: bool = True) -> Dict[str, Any]:
    """Train with the recipe above into ``out`` (``harness.run``); returns the best validation and the final test
    figures.

    ``setting`` is the paper's (``resolve``), ``overrides`` any ``LMConfig`` fields; a resumed run keeps
    its saved settings, with ``overrides`` on top (more ``epochs``; any other change is refused).
    """
    saved = saved_settings(out) if resume else None
    config = LMConfig.create(saved["config"] if saved else setting, overrides or {})
    run = Run(out, {"model": name, "dataset": corpus.dataset, "config": dataclasses.asdict(config)}, ("epochs",),
              progress, log)
    with run.start(resume) as state:
        if state is not None and state["info"]["vocabulary"] != corpus.words:
            raise LMError(f"{run.checkpoint} was trained on another vocabulary than the {corpus.dataset} corpus given")
        return _train(run, state, name, genotype, corpus, config)


def _train(run: Run, state: Optional[Dict[str, Any]], name: str, genotype: RecurrentGenotype, corpus: Corpus,
           config: LMConfig) -> Dict[str, Any]:
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = build_model(genotype, len(corpus.words), config)
    kind, start, val_losses, best_loss = "sgd", 0, [], math.inf
    if state is not None:
        kind, start, val_losses, best_loss = state["optimizer"], state["epoch"], state["val_losses"], state["best_loss"]
    optimizer = _make_optimizer(kind, model, config)
    if state is not None:
        run.load(model, state)
        optimizer.load_state_dict(state["optimizer_state"])
    train_data = batchify(corpus.train, config.batch_size)
    valid_data = batchify(corpus.valid, config.eval_batch_size)
    info = _run_info(name, corpus.dataset, genotype, corpus, config)
    params = sum(p.numel() for p in model.parameters())
    run.log(f"{name}: {params:,} parameters, {len(corpus.words):,} words, {train_data.numel():,} training tokens")
    rows = train_data.size(0) if not config.max_batches else min(train_data.size(0), config.max_batches * config.bptt)
    with run.display(rows * config.epochs, rows * start) as display:
        for epoch in range(start + 1, config.epochs + 1):
            display.describe(f"epoch {epoch}/{config.epochs}")
            started = time.perf_counter()
            train_loss = train_epoch(model, optimizer, train_data, config, display)
            with _Averaged(model, optimizer):
                val_loss, _ = evaluate(model, valid_data, config.bptt)
                if val_loss < best_loss:
                    best_loss = val_loss
                    save_checkpoint(run.out / "best", model, {"info": info, "epoch": epoch, "val_loss": val_loss})
            if kind == "sgd":
                if switch_to_asgd(val_losses, val_loss, config.nonmono):
                    kind, optimizer = "asgd", _make_optimizer("asgd", model, config)
                    display.line("switching to ASGD")
                val_losses.append(val_loss)
            record = dict(epoch=epoch, optimizer=kind, train_loss=train_loss, train_ppl=math.exp(train_loss),
                          valid_loss=val_loss, valid_ppl=math.exp(val_loss), seconds=time.perf_counter() - started)
            display.line(f"epoch {epoch}/{config.epochs} ({record['seconds']:.0f}s, {kind}): train ppl "
                         f"{record['train_ppl']:.2f}, valid ppl {record['valid_ppl']:.2f}")
            run.save(model, dict(info=info, epoch=epoch, optimizer=kind, optimizer_state=optimizer.state_dict(),
                                 val_losses=val_losses, best_loss=best_loss), record)
    return evaluate_checkpoint(run.out / "best", corpus)


def load_checkpoint(path: Path) -> Tuple[RNNModel, Dict[str, Any]]:
    """The model saved at ``path`` (a run directory, its ``best``/``last`` checkpoint) and its run info."""
    path = Path(path)
    found = find_checkpoint(path) or find_checkpoint(path / "best")
    if found is None:
        raise LMError(f"{path}: no checkpoint here (expected model.safetensors and state.pt, or a run "
                      f"directory with best/)")
    info = load_state(found)["info"]
    (genotype,) = parse_genotypes(info["genotype"], f"{found}/state.pt").values()
    config = LMConfig.create(info["config"], {})
    model = build_model(genotype, len(info["vocabulary"]), config)
    load_weights(found, model)
    return model, info


def evaluate_checkpoint(path: Path, corpus: Corpus) -> Dict[str, Any]:
    """``evaluate_model`` on a saved model, at its run's bptt and batch sizes."""
    model, info = load_checkpoint(path)
    if info["vocabulary"] != corpus.words:
        raise LMError(f"{path} was trained on another vocabulary than the {corpus.dataset} corpus given")
    config = info["config"]
    return evaluate_model(model, corpus, config["bptt"], config["eval_batch_size"], config["test_batch_size"],
                          name=info["model"])


def evaluate_model(model: RNNModel, corpus: Corpus, bptt: int = 35, eval_batch_size: int = 10,
                   test_batch_size: int = 1, name: str = "") -> Dict[str, Any]:
    """Validation and test perplexity, parameters and evaluation tokens/s of ``model`` on ``corpus``."""
    if model.ntoken != len(corpus.words):
        raise LMError(f"{name or 'the model'} has a {model.ntoken:,}-word output layer but the {corpus.dataset} "
                      f"corpus has {len(corpus.words):,} words")
    val_loss, val_speed = evaluate(model, batchify(corpus.valid, eval_batch_size), bptt)
    test_loss, test_speed = evaluate(model, batchify(corpus.test, test_batch_size), bptt)
    return dict(model=name, dataset=corpus.dataset, params=sum(p.numel() for p in model.parameters()),
                valid_loss=val_loss, valid_ppl=math.exp(val_loss), test_loss=test_loss, test_ppl=math.exp(test_loss),
                valid_tokens_per_s=val_speed, test_tokens_per_s=test_speed)
