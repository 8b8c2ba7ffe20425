"""Loading, saving and stretching CLIP models, and converting other checkpoint layouts."""
