"""Evaluation: Recall@K and joint mAP@K as tensor ops, and the multi-model harness."""
