"""``nas-zoo search``: the shared search machinery (``supernet``, ``loop``, ``derive``) and the algorithms
built on it, one short file each (``darts``, ``gdas``, ``pc_darts``)."""
from .darts import Darts
from .derive import derive, derive_cell
from .gdas import Gdas
from .loop import BiLevel, Search, SearchAlgorithm, SearchConfig, with_defaults
from .pc_darts import PcDarts
from .supernet import Architecture, GumbelHard, MixedEdge, SearchCell, SearchNetwork, Softmax

#: CLI name -> algorithm class
ALGORITHMS = {"darts": Darts, "gdas": Gdas, "pc-darts": PcDarts}

__all__ = ["ALGORITHMS", "Architecture", "BiLevel", "Darts", "Gdas", "GumbelHard", "MixedEdge", "PcDarts", "Search",
           "SearchAlgorithm", "SearchCell", "SearchConfig", "SearchNetwork", "Softmax", "derive", "derive_cell", "with_defaults"]
