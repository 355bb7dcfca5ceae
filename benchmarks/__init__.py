"""Speed benchmarks (``make bench``): each ``bench_*.py`` module measures one speed goal as a
ratio against a baseline run in the same process, and writes ``build/bench/<name>.json``."""
