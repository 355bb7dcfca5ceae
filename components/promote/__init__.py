"""Scheduled retraining, last step: register the new model only if it beats production."""
