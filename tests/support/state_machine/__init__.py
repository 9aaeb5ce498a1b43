"""The hypothesis state machine of ``tests/test_state_machine.py``: it drives admitd and
``support.model`` side by side and fails at the first step where they disagree.

- ``config``: the one configuration both the server and the model run.
- ``drivers``: two ways to reach the server, the engine in this process and a real gRPC
  server, each turning an RPC's outcome into an ``Answer`` and the status into a
  ``ServerState``, on a manual clock.
- ``machine``: ``AdmissionMachine``, its rules (acquire, release, renew, cancel, advance the
  clock) and the invariant that the server agrees with the model.
"""
