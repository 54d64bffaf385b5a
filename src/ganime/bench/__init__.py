"""Benchmarks behind ``ganime benchmark`` (and the thin scripts in benchmarks/): ours vs the reference recipe.

``train`` (images/s end to end), ``infer`` (one sketch's latency), ``data`` (prepare and loader
throughput). Each ``run(args)`` returns a flat dict of results; the command prints it.
"""
