"""``nas-zoo search``: the shared search machinery (``supernet``, ``bilevel``, ``algorithm``, ``loop``) and
the algorithms built on it, one file each. Adding an algorithm is one file and one line in ``ALGORITHMS``."""
from .algorithm import Option, SearchAlgorithm, SearchConfig, with_defaults
from .b_pc_darts import BPcDarts
from .bdarts import BDarts
from .bilevel import BiLevel
from .broad import BroadSearchNetwork
from .darts import Darts
from .ednas import Ednas, EdnasNetwork
from .gdas import Gdas, GumbelHard
from .loop import Search
from .pc_darts import PartialChannels, PcDarts
from .pdarts import Pdarts
from .supernet import Architecture, Mix, MixedEdge, SearchCell, SearchNetwork, Softmax

#: CLI name -> algorithm class
ALGORITHMS = {"darts": Darts, "gdas": Gdas, "pc-darts": PcDarts, "pdarts": Pdarts, "b-darts": BDarts,
              "b-pc-darts": BPcDarts, "ednas": Ednas}

__all__ = ["ALGORITHMS", "Architecture", "BDarts", "BPcDarts", "BiLevel", "BroadSearchNetwork", "Darts", "Ednas", "EdnasNetwork", "Gdas", "GumbelHard", "Mix", "MixedEdge", "Option",
           "PartialChannels", "PcDarts", "Pdarts", "Search", "SearchAlgorithm", "SearchCell", "SearchConfig",
           "SearchNetwork", "Softmax", "with_defaults"]
