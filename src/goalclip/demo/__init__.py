"""The offline demo: a synthetic long-caption world and the end-to-end pipeline on it."""
