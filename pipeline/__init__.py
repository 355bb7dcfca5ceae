"""The Kubeflow pipeline: run profiles, the DAG, and the ``sidreasoner`` CLI."""
