"""nas-zoo: the DARTS-family searched architectures as timm models, their searches and a harness.

``import nas_zoo`` registers every zoo architecture with timm (``timm.create_model("gdas_v1")``).
"""
from .registry.genotype import Genotype, GenotypeError, UnknownNameError, get_genotype, list_genotypes, load_genotype
from .models.networks import BroadNetwork, CellNetwork, build_network
from .resolver import Resolved, ResolveError, resolve
from .registry.zoo import ModelSpec, create_model, get_model_spec, list_models

__version__ = "0.1.0"
__all__ = [
    "Genotype", "GenotypeError", "UnknownNameError", "get_genotype", "list_genotypes", "load_genotype",
    "BroadNetwork", "CellNetwork", "build_network", "ModelSpec", "create_model", "get_model_spec", "list_models",
    "Resolved", "ResolveError", "resolve",
]
