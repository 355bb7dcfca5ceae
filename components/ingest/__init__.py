"""Ingest: raw catalog and interactions in, canonical items and samples out."""
