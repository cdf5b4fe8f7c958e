"""Model layer: the embedding network, pretrained weights, and self-describing checkpoints."""
