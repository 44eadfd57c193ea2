"""The training core: augmentation, class text features, evaluation and the optimisation loop."""
