"""Seeing results: attention maps, retrieval grids, mined pairs, long-text image search."""
