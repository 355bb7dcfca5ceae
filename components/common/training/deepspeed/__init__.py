"""DeepSpeed config files (ZeRO-2, ZeRO-3) selected by a training stage's launch.strategy."""
