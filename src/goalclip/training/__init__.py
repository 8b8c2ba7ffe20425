"""Training: examples and collate, the GOAL losses, the Accelerate training loop."""
