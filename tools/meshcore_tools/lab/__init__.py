"""The local lab mesh: podman containers wired by veth links from a topology, run by ``labctl``.

One module per job, each a ``labctl`` subcommand:

- :mod:`.topology`  generators, the file loader and the address plan;
- :mod:`.plan`      ``labctl plan``: the state document and the Ansible inventory;
- :mod:`.wire`      ``labctl wire``: the veth links between the running containers;
- :mod:`.status`    ``labctl status``: neighbours, services, scrapes, reachability;
- :mod:`.report`    ``labctl report``: the key series from the lab's Prometheus, plot and JSON;
- :mod:`.destroy`   ``labctl destroy``: remove what the lab created, and nothing else;
- :mod:`.state`     where the lab keeps its state and how its objects are named;
- :mod:`.prometheus` the Prometheus HTTP API client that status, report and the tests share.

The containers themselves are created by ``playbooks/lab.yml`` (containers.podman).
"""
