"""Teacher corpus: the SID-language alignment corpus (deterministic tasks + teacher enrichment)."""
