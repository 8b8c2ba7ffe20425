"""Shared foundations: text cleaning and sentence spans, image decoding, JSONL manifests."""
