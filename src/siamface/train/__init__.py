"""Training: configuration, losses, miners, optimizer presets and the training loop."""
