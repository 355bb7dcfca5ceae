"""Scheduled retraining, step 1: find the production model of the previous runs in MLflow."""
