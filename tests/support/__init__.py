"""What the tests share, apart from fixtures (``tests/conftest.py``): import helpers from here.

A test module imports ``support.*`` and never ``conftest`` or another test module
(``tests/test_suite_rules.py`` checks it). ``tests/`` is on ``sys.path`` (pytest's ``pythonpath``
setting), so this package is ``support``; ``scripts/soak.py`` puts it there too.

- ``parts`` / ``plugin``: the markers ``redis``/``node``/``litellm``, applied from the
  fixtures a test uses, and the rule for a missing redis-server, Node or LiteLLM (skip; in
  CI, fail).
- ``harness``: a real admitd on a socket with a manual clock, and a client to poke it.
- ``decoding``: a failed RPC's rich status, decoded; a reply's fields by name.
- ``health``: gRPC health checks.
- ``polling``: wait for a real-world condition, with a bound.
- ``queueing``: fill a one-slot pool's queue and watch the order it is served in.
- ``metrics``: scrape the Prometheus endpoint.
- ``redis_server`` / ``processes``: real redis-server and admitd processes.
- ``proxy``: a loopback TCP proxy to pause (a replication link losing writes), move and cut.
- ``faults``: what the fault tests with real processes share (requests, channels, codes).
- ``certs``: a test CA and the certificates it signs.
- ``envoy``: Envoy's rate limit requests, built with the stubs of Envoy's own protos.
- ``litellm_proxy``: real LiteLLM proxies (``bench.gateway``), and the README's config.
- ``client``: the Python client's tests: a server, recording channels, injected sleeps.
- ``node``: the Node.js client's CLI and module, run as subprocesses.
- ``fuzzing``: hypothesis profiles and seeds.
- ``fuzz_server``: the server the property tests fuzz, and GetStatus as flat numbers.
- ``model``: the model the state machine checks (a package: limits, ledger, queue, admission).
- ``state_machine``: the state machine that checks the server against ``model``: its
  configuration, its drivers (the engine in process, a gRPC server) and its rules.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository's root folder."""
