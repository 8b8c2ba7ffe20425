"""Loading, saving and stretching CLIP and SigLIP models (one backbone interface); converting checkpoints."""
