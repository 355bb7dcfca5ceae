"""Pipeline stages, one package each, plus ``common``."""
