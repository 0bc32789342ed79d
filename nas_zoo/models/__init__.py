"""The networks: the DARTS operations, the cells, the evaluation networks (CNN and broad), the recurrent
language model, and what is measured of them (multiply-adds, a batch-norm-folded inference copy)."""
