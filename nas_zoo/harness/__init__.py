"""The harness: datasets and transforms, the papers' recipes, checkpoints, the resumable run, training and
evaluation of image networks."""
