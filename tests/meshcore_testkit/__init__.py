"""mesh-core's test kit: what the tests and benchmarks share and the nodes never run.

- :mod:`.pki`        a throwaway CA and node certificates (made at test time; no keys committed);
- :mod:`.agents`     real agents in network namespaces (on :mod:`meshcore_tools.netns`);
- :mod:`.monitoring` those agents plus node_exporters and a real Prometheus with the role's rules;
- :mod:`.oracle`     brute-force references the algorithms are checked against;
- :mod:`.marks`      pytest marks (root-only tests);
- :mod:`.releases`   signed agent releases with THROWAWAY keys (the rollout and role tests).
- :mod:`.containerlab` the container lab (`make lab`) for the slow tests on it.
- :mod:`.loader`     modules that are files (filter plugins, scripts for the nodes), by path.

It lives under tests/ and is installed editable into the dev venv by ``make setup``
(as ``meshcore_tools`` is), so tests and benchmarks import it without path tricks.
"""
