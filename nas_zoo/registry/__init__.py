"""What the zoo holds: the genotypes (``genotypes/*.json``, with provenance and reported figures), the zoo
models registered with timm, and their measured sizes beside the papers'."""
