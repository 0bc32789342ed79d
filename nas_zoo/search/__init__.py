"""``nas-zoo search``: the shared search machinery (``supernet``, ``bilevel``, ``algorithm``, ``loop``) and
the algorithms built on it, one file each. Adding an algorithm is one file and one line in ``ALGORITHMS``."""
from ..registry.genotype import TEXT_DATASETS
from .algorithm import Option, SearchAlgorithm, SearchConfig, with_defaults
from .b_pc_darts import BPcDarts
from .bdarts import BDarts
from .bilevel import BiLevel
from .broad import BroadSearchNetwork
from .darts import Darts
from .ednas import Ednas, EdnasNetwork
from .ednas_rnn import EdnasLanguageSearch
from .gdas import Gdas, GumbelHard
from .loop import Search
from .pc_darts import PartialChannels, PcDarts
from .pdarts import Pdarts
from .recurrent import LanguageSearch, RecurrentSupernet
from .supernet import Architecture, Mix, MixedEdge, SearchCell, SearchNetwork, Softmax

#: CLI name -> algorithm class
ALGORITHMS = {"darts": Darts, "gdas": Gdas, "pc-darts": PcDarts, "pdarts": Pdarts, "b-darts": BDarts,
              "b-pc-darts": BPcDarts, "ednas": Ednas}


#: algorithms whose recurrent search is a run of its own (not the bi-level steps of ``LanguageSearch``)
LANGUAGE_RUNS = {"ednas": EdnasLanguageSearch}


def new_search(algorithm: SearchAlgorithm, config: SearchConfig, out, progress: bool = True) -> Search:
    """The run for ``config.dataset`` into ``out``: a recurrent cell as a language model on a text corpus, else a
    CNN. ``.run(resume)`` runs it."""
    kind = LANGUAGE_RUNS.get(algorithm.name, LanguageSearch) if config.dataset in TEXT_DATASETS else Search
    return kind(algorithm, config, out, progress)


__all__ = ["ALGORITHMS", "Architecture", "BDarts", "BPcDarts", "BiLevel", "BroadSearchNetwork", "Darts", "Ednas",
           "EdnasNetwork", "Gdas", "GumbelHard", "LanguageSearch", "Mix", "MixedEdge", "Option", "PartialChannels",
           "PcDarts", "Pdarts", "RecurrentSupernet", "Search", "SearchAlgorithm", "SearchCell", "SearchConfig",
           "SearchNetwork", "Softmax", "new_search", "with_defaults"]
