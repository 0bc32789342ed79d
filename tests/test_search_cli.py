"""``nas-zoo search``: the genotype and record it writes, exact resume, bad input, and the derivation rules."""
import json
import re

import pytest
import torch
from typer.testing import CliRunner

from nas_zoo.files import locked_output
from nas_zoo.cli.app import app
from nas_zoo.registry.genotype import load_genotype
from nas_zoo.models.ops import PRIMITIVES
from nas_zoo.search import (ALGORITHMS, Darts, Gdas, Mix, Option, PcDarts, Search, SearchAlgorithm, SearchConfig,
                            SearchNetwork, Softmax, with_defaults)
from nas_zoo.search.algorithm import LOOP_DEFAULTS
from nas_zoo.harness import run as run_module
from nas_zoo.search.algorithm import strongest_inputs
from nas_zoo.search.bilevel import channels_last_safe
from nas_zoo.search.gdas import strongest_pairs

runner = CliRunner()
TINY = ["--init-channels", "4", "--layers", "3", "--batch-size", "8", "--num-workers", "0"]
RECORD_FIELDS = {"algorithm", "options", "config", "seed", "versions", "device", "wall_time_s", "cpu_hours",
                 "peak_memory", "epochs_done", "stages", "epochs", "architecture", "skip_connections_normal"}


def search(algorithm, data, out, *extra, epochs=2):
    # the collapse monitor has its own tests (test_search_hessian.py); here it would double each tiny search
    monitor = [] if algorithm == "ednas" else ["--hessian-every", "0"]
    return runner.invoke(app, ["search", algorithm, "--data-dir", str(data), "--out", str(out), "--epochs",
                               str(epochs), *TINY, *monitor, *extra])


@pytest.mark.parametrize("algorithm, extra, label", [
    ("darts", [], "darts_1st"), ("darts", ["--order", "2"], "darts_2nd"), ("gdas", [], "gdas"),
    ("gdas", ["--frc"], "gdas_frc"), ("pc-darts", ["--arch-warmup", "1"], "pc_darts")])
def test_search_writes_a_genotype_and_its_record(tiny_cifar, tmp_path, algorithm, extra, label):
    out = tmp_path / "out"
    result = search(algorithm, tiny_cifar, out, *extra)
    assert result.exit_code == 0, result.output
    assert f"{label} epoch 1/2: train" in result.output and f"{label} epoch 2/2: train" in result.output
    genotype = load_genotype(out / "genotype.json")
    assert genotype.name == f"{label}_cifar10_seed2".upper()
    assert len(genotype.normal) == 8 and all(op != "none" for op, _ in genotype.normal)
    assert (genotype.reduce is None) == (label == "gdas_frc")
    record = json.loads((out / "search.json").read_text())
    assert RECORD_FIELDS <= set(record) and record["algorithm"] == label and record["epochs_done"] == 2
    assert record["config"]["epochs"] == 2 and record["config"]["init_channels"] == 4 and record["seed"] == 2
    assert record["versions"]["torch"] == torch.__version__ and record["peak_memory"]["bytes"] > 0
    assert [e["epoch"] for e in record["epochs"]] == [0, 1]
    assert all({"train_acc", "valid_acc", "train_loss", "valid_loss", "genotype", "lr"} <= set(e)
               for e in record["epochs"])
    assert record["epochs"][-1]["genotype"]["normal"] == [list(edge) for edge in genotype.normal]
    assert record["skip_connections_normal"] == sum(op == "skip_connect" for op, _ in genotype.normal)
    cell_types = ["normal"] if label == "gdas_frc" else ["normal", "reduce"]
    assert sorted(k for k in record["architecture"] if k.startswith("alphas.")) == [f"alphas.{t}" for t in cell_types]
    assert all(len(record["architecture"][f"alphas.{t}"]) == 14 for t in cell_types)
    assert ("betas.normal" in record["architecture"]) == (label == "pc_darts")
    if label.startswith("gdas"):
        assert [e["tau"] for e in record["epochs"]] == pytest.approx([10.0, 0.1])
    # the record says what the run used: the algorithm's own settings and the filled-in loop settings
    expected_options = {"darts": {"order": 2 if "2nd" in label else 1}, "pc-darts": {"k": 4},
                        "gdas": {"frc": label == "gdas_frc", "tau_max": 10.0, "tau_min": 0.1,
                                 "soft": False}}[algorithm]
    assert record["options"] == expected_options and "options" not in record["config"]
    assert record["config"]["arch_warmup"] == (1 if algorithm == "pc-darts" else 0)
    assert record["config"]["lr"] == (0.1 if algorithm == "pc-darts" else 0.025)
    assert [s["stage"] for s in record["stages"]] == [0] and record["stages"][0]["candidates_per_edge"] == 8
    # the genotype file is one `nas-zoo info` / `nas-zoo train` read
    info = runner.invoke(app, ["info", str(out / "genotype.json"), "--json"])
    assert info.exit_code == 0, info.output


def test_searched_genotype_trains(tiny_cifar, tmp_path):
    out = tmp_path / "search"
    assert search("gdas", tiny_cifar, out, epochs=1).exit_code == 0
    result = runner.invoke(app, ["train", str(out / "genotype.json"), "--dataset", "cifar10", "--data-dir",
                                 str(tiny_cifar), "--out", str(tmp_path / "train"), "--init-channels", "4",
                                 "--layers", "3", "--batch-size", "16", "--num-workers", "0", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "train" / "metrics.jsonl").read_text().count("\n") == 1


@pytest.mark.parametrize("algorithm", ["darts", "gdas"])
def test_search_resume_continues_exactly(tiny_cifar, tmp_path, monkeypatch, algorithm):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert search(algorithm, tiny_cifar, straight).exit_code == 0
    save = run_module.save_checkpoint

    def save_then_die(*args, **kwargs):  # the process is killed right after the first epoch's checkpoint
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "save_checkpoint", save_then_die)
    assert search(algorithm, tiny_cifar, killed).exit_code == 130
    monkeypatch.setattr(run_module, "save_checkpoint", save)
    assert not (killed / "search.json").exists()  # the record is written after the checkpoint
    result = search(algorithm, tiny_cifar, killed, "--resume")
    assert result.exit_code == 0, result.output
    a, b = (json.loads((out / "search.json").read_text()) for out in (straight, killed))
    strip = ["train_loss", "train_acc", "valid_loss", "valid_acc", "genotype"]
    assert [[e[k] for k in strip] for e in a["epochs"]] == [[e[k] for k in strip] for e in b["epochs"]]
    assert a["architecture"] == b["architecture"]


def test_outputs_left_stale_by_a_kill_after_the_last_checkpoint_are_rebuilt(tiny_cifar, tmp_path, monkeypatch):
    """Killed between the final checkpoint and the rewrite of genotype.json / search.json (which then still
    hold the epoch before), --resume has no epoch left to run and rebuilds both from the checkpoint."""
    out = tmp_path / "out"
    save, saves = run_module.save_checkpoint, []

    def die_at_the_last(*args, **kwargs):
        save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(run_module, "save_checkpoint", die_at_the_last)
    assert search("darts", tiny_cifar, out).exit_code == 130
    stale = json.loads((out / "search.json").read_text())
    assert stale["epochs_done"] == 1  # written after the first epoch, not after the second
    monkeypatch.setattr(run_module, "save_checkpoint", save)
    result = search("darts", tiny_cifar, out, "--resume")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "search.json").read_text())
    assert record["epochs_done"] == 2 and len(record["epochs"]) == 2
    genotype = json.loads((out / "genotype.json").read_text())
    assert genotype["search"]["epochs"] == 2
    assert genotype["normal"] == record["epochs"][-1]["genotype"]["normal"]


def test_a_second_search_into_the_same_folder_is_refused(tiny_cifar, tmp_path):
    out = tmp_path / "out"
    with locked_output(out):  # another run holds it
        result = search("darts", tiny_cifar, out, epochs=1)
    assert result.exit_code == 2 and "is being written by pid" in result.output, result.output
    assert not (out / "checkpoint").exists()


def test_search_bad_input_is_one_clear_error(tiny_cifar, tmp_path):
    out = tmp_path / "out"
    cases = [
        (["search", "dart"], "unknown algorithm 'dart'; choose one of darts, gdas, pc-darts, pdarts"),
        (["search", "gdas", "--order", "2"], "No such option: --order"),
        (["search", "darts", "--frc"], "No such option: --frc"),
        (["search", "darts", "--order", "3"], "DARTS --order must be 1 or 2, got 3"),
        (["search", "pdarts", "--add-layers", "0,x"], "--add-layers '0,x': expected comma-separated int values"),
        (["search", "pdarts", "--num-to-keep", "5,3,2"], "that end in 1"),
        (["search", "pdarts", "--add-layers", "0,6"], "one value per stage each; got 0,6 and 0,0,0 and"),
        (["search", "darts", "--layers", "2", "--data-dir", str(tiny_cifar), "--out", str(tmp_path / "l2")],
         "at least 3 cells"),
        (["search", "darts", "--init-channels", "6"], "multiple of 4"),
        (["search", "darts", "--device", "gpu0"], "--device 'gpu0' is not cpu, cuda or cuda:N"),
        *([(["search", "darts", "--device", "cuda"], "no such CUDA GPU is visible here")]
          if not torch.cuda.is_available() else []),
        (["search", "darts", "--data-dir", str(tmp_path / "nowhere"), "--out", str(out)], str(tmp_path / "nowhere")),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output.replace("\n", ""), (args, result.output)
        assert result.output.count("\n") == 1, result.output  # one line
    assert search("darts", tiny_cifar, out, epochs=1).exit_code == 0
    again = search("darts", tiny_cifar, out, epochs=1)
    assert again.exit_code == 2 and "pass --resume" in again.output
    other = search("darts", tiny_cifar, out, "--resume", "--seed", "3", epochs=1)
    assert other.exit_code == 2 and "other settings (seed 2 -> 3)" in other.output.replace("\n", " ")


def test_pc_darts_holds_the_architecture_during_warm_up(tiny_cifar, tmp_path):
    config = SearchConfig(data_dir=str(tiny_cifar), epochs=2, batch_size=8, init_channels=4, layers=3,
                          arch_warmup=1, num_workers=0, device="cpu")
    run = Search(PcDarts(), config, tmp_path / "out", progress=False)
    alphas = run.bilevel.alphas
    start = [p.detach().clone() for p in alphas]
    run.train_epoch(0)
    assert all(torch.equal(p, q) for p, q in zip(alphas, start))
    run.train_epoch(1)
    assert not any(torch.equal(p, q) for p, q in zip(alphas, start))


def test_gdas_samples_one_operation_and_passes_the_gradient_straight_through():
    alpha = torch.randn(14, 8, requires_grad=True)
    gdas = Gdas()
    hard, index, _ = gdas.network(with_defaults(gdas, SearchConfig(init_channels=4, layers=3)), 10).mixing(
        {"alphas": alpha}, 4)
    assert hard.detach().sum(-1).allclose(torch.ones(14)) and len(index) == 14
    assert all(hard[e, i].item() == pytest.approx(1.0) for e, i in enumerate(index))
    (hard[0, index[0]] * 1.0).backward()
    assert alpha.grad[0].abs().sum() > 0 and alpha.grad[1:].abs().sum() == 0


def test_derivation_rules():
    weights = torch.full((14, 8), 0.01)
    none, skip, sep3 = (PRIMITIVES.index(n) for n in ("none", "skip_connect", "sep_conv_3x3"))
    weights[:, none] = 0.9  # never chosen
    weights[0, skip], weights[0, sep3] = 0.5, 0.4  # node 0: both strong operations on input 0 ...
    weights[1, sep3] = 0.2  # ... and a weaker one on input 1
    candidates = [list(PRIMITIVES)] * 14
    darts = strongest_inputs(weights, candidates, 4)
    gdas = strongest_pairs(weights, candidates, 4)
    assert darts[:2] == [("skip_connect", 0), ("sep_conv_3x3", 1)]  # DARTS: two inputs, best op each
    assert gdas[:2] == [("skip_connect", 0), ("sep_conv_3x3", 0)]  # GDAS: the two best (op, input) pairs
    edge_weights = torch.ones(14, 1)
    edge_weights[0] = 0.1  # PC-DARTS: the edge's beta outweighs its operation weight
    assert strongest_inputs(weights * edge_weights, candidates, 4)[:2] == [("sep_conv_3x3", 1), ("skip_connect", 0)]


@pytest.mark.parametrize("algorithm", [Darts(), Gdas(frc=True), PcDarts()])
def test_algorithms_derive_from_their_own_supernet(algorithm):
    """Each algorithm's derivation reads the supernet it builds: PC-DARTS ranks edges by beta too."""
    torch.manual_seed(0)
    model = algorithm.network(with_defaults(algorithm, SearchConfig(init_channels=8, layers=3, nodes=4)), 10)
    fields, notes = algorithm.derive(model)
    assert len(fields["normal"]) == 8 and (fields["reduce"] is None) == isinstance(algorithm, Gdas)
    if isinstance(algorithm, PcDarts):
        with torch.no_grad():
            model.arch.alphas["normal"][2:5] = 0.0
            model.arch.alphas["normal"][3:5, 4] = 3.0  # node 1: edges 3, 4 peaked, edge 2 (input 0) uniform
            model.arch.betas["normal"].zero_()
        plain, _ = algorithm.derive(model)
        assert [edge[1] for edge in plain["normal"][2:4]] == [1, 2]
        with torch.no_grad():
            model.arch.betas["normal"][2] = 10.0  # ... but node 1 weights edge 2 far above the others
        weighted, _ = algorithm.derive(model)
        assert weighted["normal"][2][1] == 0


def test_narrow_supernets_stay_nchw():
    """torch's channels-last convolution backward corrupts memory below 4 output channels (loop.py)."""
    pc = PcDarts()
    narrow, wide = (pc.network(with_defaults(pc, SearchConfig(init_channels=c, layers=3)), 10) for c in (8, 16))
    assert not channels_last_safe(narrow) and channels_last_safe(wide)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_each_algorithm_has_its_command_with_its_own_options(name):
    """`nas-zoo search NAME --help` is made from the registry: the algorithm's declared options and its paper
    defaults, nothing of the other algorithms'."""
    algorithm = ALGORITHMS[name]
    result = runner.invoke(app, ["search", name, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    flags = {o.name.replace("_", "-") for o in algorithm.options}
    others = {o.name.replace("_", "-") for a in ALGORITHMS.values() if a is not algorithm for o in a.options}
    assert all(f"--{flag}" in result.output for flag in flags)
    assert not any(f"--{flag} " in result.output for flag in others - flags)
    defaults = {**LOOP_DEFAULTS, **algorithm.defaults}
    text = " ".join(result.output.split())  # the help wraps at 80 columns under CliRunner

    def shown(key):  # the paper's default, and the ImageNet search's where it differs
        imagenet = (algorithm.imagenet or {}).get(key, defaults[key])
        return f"default: {defaults[key]}" + (f"; imagenet: {imagenet}" if imagenet != defaults[key] else "")

    assert re.search(rf"--epochs\s[^\[]*\[{shown('epochs')}\]", text)
    assert re.search(rf"--batch-size\s[^\[]*\[{shown('batch_size')}\]", text)


class UniformSampling(SearchAlgorithm):
    """A toy algorithm written outside the package: one operation per edge sampled uniformly (alpha only
    ranks them), the weights step only, the strongest single input per node."""

    name = "uniform"
    options = (Option("temperature", 1.0, "unused"),)

    class Mixing(Softmax):
        def __call__(self, params, nodes):
            alpha = params["alphas"]
            index = torch.randint(0, alpha.shape[1], (alpha.shape[0],)).tolist()
            return Mix(torch.ones_like(alpha), index)

    def network(self, config, num_classes, stage=0, candidates=None):
        return SearchNetwork(config.init_channels, num_classes, config.layers, config.nodes, self.Mixing(), candidates)

    def step(self, search, train, valid):
        return search.weights_step(train)


def test_a_new_algorithm_is_one_class_on_the_shared_parts(tiny_cifar, tmp_path):
    config = SearchConfig(data_dir=str(tiny_cifar), epochs=1, batch_size=8, init_channels=4, layers=3,
                          num_workers=0, device="cpu")
    run = Search(UniformSampling(temperature=2.0), config, tmp_path / "out", progress=False)
    before = [p.detach().clone() for p in run.model.weights()]
    record = run.run()
    assert record["algorithm"] == "uniform" and record["options"] == {"temperature": 2.0}
    assert record["epochs_done"] == 1 and record["config"]["lr"] == LOOP_DEFAULTS["lr"]
    assert not all(torch.equal(p, q) for p, q in zip(run.model.weights(), before))
    assert load_genotype(tmp_path / "out" / "genotype.json").name == "UNIFORM_CIFAR10_SEED2"
    with pytest.raises(TypeError, match="uniform takes no option 'order'"):
        UniformSampling(order=2)
