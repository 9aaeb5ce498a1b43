"""admitd benchmark harness: ``python -m bench.run`` (full) or ``python -m bench.run --smoke``.

Every server (admitd replicas, the no-op echo, the simulated provider, redis-server) and every
load generator is a separate process on 127.0.0.1; see BENCHMARKS.md for what is measured.
"""
