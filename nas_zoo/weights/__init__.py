"""Weights: the authors' checkpoints converted, the checked download, nas-zoo's published folder and ``push``."""
