"""Studies: the engines behind experiments/ (steps to target, noise runs, benchmarks).

Each experiment file in experiments/ is a config plus a thin main that calls one of these.
"""
