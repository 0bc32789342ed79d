"""``python -m nas_zoo.cli``, which is what ``torchrun -m nas_zoo.cli`` runs in every process."""
from .app import main

main()
