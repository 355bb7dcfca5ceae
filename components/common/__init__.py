"""Code shared by every stage: config, storage, lineage, the stage protocol, logging."""
