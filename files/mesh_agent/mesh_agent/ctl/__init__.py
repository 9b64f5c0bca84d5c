"""``meshctl``: the operator's view of one node's agent, or of a fleet.

It reads the agent's HTTP API only (the same read-only endpoints Prometheus and
the tests use): :mod:`.client` fetches, :mod:`.status` and :mod:`.fleet` turn
answers into summaries (plain functions, no I/O), :mod:`.render` prints them as
aligned tables, and :mod:`.main` is the command line.
"""
