"""Adapters that turn public datasets' own layouts into goalclip manifests."""
