"""Reasoning activation (Stage 2a): SFT from the aligned model on <think>reasoning</think> + target SID."""
