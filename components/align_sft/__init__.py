"""Alignment SFT (Stage 1): backbone loading, the tiny offline backbone, and the SFT code shared
with reasoning activation."""
