"""Three emulated Raspberry Pis: the operator's path, proven end to end.

For each link backend (native, batman) this does exactly what the README's
"Three Pis" quickstart tells an operator to do, with QEMU in place of the
cards and the radio:

1. writes a 3-node site: a copy of inventories/starter whose site config names
   the backend and, as the mesh interfaces, the two wired virtio NICs each
   emulated Pi has (eth1, eth2: QEMU has no Wi-Fi radio, the one part mocked);
2. builds or reuses the site's rpi-arm64 image (make image-rpi INVENTORY=...);
3. seeds three card copies with make seed (SSH_KEY= a key made for the run);
4. boots the three under qemu-system-aarch64 (TCG) at once, wired as a line
   (node 1 - node 2 - node 3) with QEMU dgram netdevs (UDP on 127.0.0.1), each
   with a management NIC (QEMU user networking, restrict=on, ports forwarded on
   127.0.0.1 only). Node 3's real-time clock is a year behind;
5. asserts, with no Ansible run after flashing: each node's hostname and mesh
   address; the agent's neighbours; adverts verified across the mesh (every
   node's topology has the three nodes and both links); node 1 pings node 3's
   mesh address through node 2; node 3's clock was stepped by the mesh's time
   server (node 1); a Prometheus on the host scrapes all three agents and
   node_exporters. Then, with --soak SECONDS, it leaves the quiet mesh alone
   that long and counts each agent's link_down events by reason, from boot and
   during the soak: nothing is cut, so every one is a false death (a figure,
   recorded as the check link_downs, not a pass/fail);
6. runs playbooks/site.yml over ssh against the three, twice; both runs must
   report changed=0 (a flashed card is already what site.yml makes). By
   default only for the native backend (--site-yml-on): under TCG each run
   takes 25-60 min, and the batman backend's roles are already converged
   twice on a booted card by `make molecule-image`.

Each step's wall time (and the load average) goes to one JSON line on stdout
and to build/hw-lab/<backend>/result.json. The VMs and Prometheus are always
stopped at the end (--keep leaves the VMs up for a look, and says how to stop).

    python -m meshcore_tools.hwlab [--backend native|batman|both] [--workdir build/hw-lab]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshcore_tools import ROOT
from meshcore_tools.image.qemupi import (
    free_port,
    free_udp_port,
    http_get,
    load_average,
    metric_lines,
    operator_env,
    qemu_argv,
    start,
)
from meshcore_tools.interrupts import Interrupts, interrupts

STARTER = ROOT / "inventories/starter"
NODES = ("starter-01", "starter-02", "starter-03")
# Boots with its RTC a year behind (--skewed).
SKEWED = "starter-03"
TIME_SERVER = "starter-01"  # the starter site's time server
# QEMU NICs in PCI slot order; the card's cmdline has net.ifnames=0.
MESH_IFACES = ("eth1", "eth2")
# QEMU user networking always gives the guest this address (each Pi's management NIC).
QEMU_GUEST_ADDRESS = "10.0.2.15"
# The most events one /v1/events read returns (mesh_agent.api.events.MAX_LIMIT).
EVENTS_LIMIT = 1000


def log(msg: str) -> None:
    print(f"[hw-lab] {msg}", file=sys.stderr, flush=True)


@dataclass
class Node:
    name: str
    index: int
    address: str
    workdir: Path
    ssh: int = field(default_factory=free_port)
    api: int = field(default_factory=free_port)
    node_exporter: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None


class Failed(Exception):
    pass


class Lab:
    def __init__(self, backend: str, workdir: Path, key_dir: Path, skewed: str = SKEWED) -> None:
        self.backend = backend
        self.skewed = skewed
        self.dir = workdir / backend
        self.inventory = self.dir / "inventory"
        self.key = key_dir / "id_ed25519"
        self.steps: dict[str, float] = {}
        self.checks: dict[str, Any] = {}
        hosts = yaml.safe_load((STARTER / "hosts.yml").read_text())["all"]["children"]
        mesh = hosts["mesh_nodes"]["hosts"]
        self.nodes = [
            Node(name, i + 1, str(mesh[name]["mesh_node_address"]), self.dir / name)
            for i, name in enumerate(NODES)
        ]
        self.prometheus: subprocess.Popen[bytes] | None = None

    # -- helpers -------------------------------------------------------------
    def check(self, name: str, value: Any) -> None:
        """Record a passed check, and log it at once: a run cut short keeps what it proved."""
        self.checks[name] = value
        log(f"{self.backend}: check {name}: {json.dumps(value, sort_keys=True, default=str)[:400]}")

    def step(self, name: str, t0: float) -> None:
        self.steps[name] = round(time.monotonic() - t0, 1)
        log(f"{self.backend}: {name} {self.steps[name]} s (load {load_average()})")

    def run(self, argv: list[str], logname: str, timeout: float, **kw: Any) -> str:
        out = self.dir / f"{logname}.log"
        with out.open("w") as f:
            proc = subprocess.run(
                argv,
                cwd=ROOT,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                **kw,
            )
        text = out.read_text(errors="replace")
        if proc.returncode != 0:
            raise Failed(
                f"{' '.join(argv[:4])}... failed (rc {proc.returncode}), see {out}:\n{text[-3000:]}"
            )
        return text

    def ssh(self, node: Node, command: str, timeout: float = 60) -> str:
        proc = subprocess.run(
            [
                "ssh",
                "-i",
                str(self.key),
                "-p",
                str(node.ssh),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=20",
                "meshadmin@127.0.0.1",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise Failed(
                f"{node.name}: `{command}` failed: {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc.stdout

    def get(self, node: Node, path: str, patience: float = 90.0) -> str:
        """GET through the node's forwarded API port; the body of a 200 answer.

        Status 0 is no answer at all (refused, reset or timed out). Under TCG on
        a loaded host an agent can miss a 15 s deadline now and then, so that is
        retried until *patience* runs out; an HTTP error status fails at once.
        """
        deadline = time.monotonic() + patience
        while True:
            status, body = http_get(f"http://127.0.0.1:{node.api}{path}", timeout=15)
            if status == 200:
                return body
            if status != 0 or time.monotonic() >= deadline:
                raise Failed(f"{node.name}: GET {path} answered {status or 'nothing'}")
            time.sleep(2)

    def api(self, node: Node, path: str) -> Any:
        return json.loads(self.get(node, path))

    def wait(self, what: str, fn: Any, timeout: float, every: float = 3.0) -> Any:
        """Call fn until it returns a truthy value (Failed counts as not yet)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            with contextlib.suppress(
                Failed, OSError, ValueError, KeyError, subprocess.TimeoutExpired
            ):
                value = fn()
                if value:
                    return value
                last = repr(value)[:300]
            time.sleep(every)
        raise Failed(f"{self.backend}: {what} not within {timeout:.0f} s (last: {last})")

    # -- 1. the site ------------------------------------------------------------
    def write_site(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        shutil.copytree(STARTER, self.inventory)
        site_file = self.inventory / "group_vars/all/site.yml"
        site = yaml.safe_load(site_file.read_text())
        mesh = site["site"]["mesh"]
        site["site"]["name"] = f"hwlab-{self.backend}"
        mesh["backend"] = self.backend
        # The one mocked part: QEMU has no radio, so wired virtio NICs are the mesh links.
        mesh["interfaces"] = [{"name": n, "wireless": False} for n in MESH_IFACES]
        mesh.pop("radio", None)
        if self.backend == "batman":
            mesh["batman"] = {"routing_algo": "BATMAN_IV", "bridge": "br-lan"}
        header = "---\n# Written by make hw-lab from inventories/starter: the emulated Pis.\n"
        site_file.write_text(header + yaml.safe_dump(site, sort_keys=False))
        # Each Pi's management NIC is QEMU user networking, whose guest address is
        # always 10.0.2.15: the agent's API listens there too (the
        # host reaches them through QEMU's port forwards), as on a site with a
        # management network.
        for node in self.nodes:
            self.set_host_vars(node, {"mesh_mgmt_address": QEMU_GUEST_ADDRESS})
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)],
            check=True,
            stdin=subprocess.DEVNULL,
        ) if not self.key.exists() else None

    # -- 2.-3. image and cards ------------------------------------------------------
    def image_and_seeds(self) -> None:
        t0 = time.monotonic()
        self.run(["make", "image-rpi", f"INVENTORY={self.inventory}"], "image", timeout=7200)
        self.step("image_build_s", t0)
        t0 = time.monotonic()
        for node in self.nodes:
            self.run(
                [
                    "make",
                    "seed",
                    f"HOST={node.name}",
                    f"INVENTORY={self.inventory}",
                    f"SSH_KEY={self.key}.pub",
                ],
                f"seed-{node.name}",
                timeout=900,
            )
        self.step("seed_three_cards_s", t0)

    # -- 4. boot ------------------------------------------------------------------
    def boot(self) -> None:
        flash = ROOT / "build/flash" / f"hwlab-{self.backend}"
        # Line topology: n1.eth2 - n2.eth1, n2.eth2 - n3.eth1; the other ends are
        # wired to ports nobody listens on (an unplugged cable).
        ports = {(n.name, i): free_udp_port() for n in self.nodes for i in (1, 2)}
        peer = {
            (NODES[0], 2): (NODES[1], 1),
            (NODES[1], 1): (NODES[0], 2),
            (NODES[1], 2): (NODES[2], 1),
            (NODES[2], 1): (NODES[1], 2),
        }
        skew = (dt.datetime.now(dt.UTC) - dt.timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%S")
        t0 = time.monotonic()
        for node in self.nodes:
            node.workdir.mkdir(parents=True, exist_ok=True)
            image = node.workdir / "card.img"
            shutil.move(flash / f"{node.name}.img", image)
            mgmt = (
                f"user,restrict=on,hostfwd=tcp:127.0.0.1:{node.ssh}-:22,"
                f"hostfwd=tcp:127.0.0.1:{node.api}-:9105,hostfwd=tcp:127.0.0.1:{node.node_exporter}-:9100"
            )
            netdevs = [(mgmt, f"52:54:00:00:{node.index:02x}:00")]
            for i in (1, 2):
                remote = ports[peer[(node.name, i)]] if (node.name, i) in peer else free_udp_port()
                netdevs.append(
                    (
                        "dgram,local.type=inet,local.host=127.0.0.1,"
                        f"local.port={ports[(node.name, i)]},remote.type=inet,"
                        "remote.host=127.0.0.1,"
                        f"remote.port={remote}",
                        f"52:54:00:00:{node.index:02x}:{i:02x}",
                    )
                )
            argv = qemu_argv(
                image,
                node.workdir,
                netdevs=netdevs,
                smp=1,
                memory_mb=1024,
                rtc_base=skew if node.name == self.skewed else None,
            )
            node.proc = start(argv, node.workdir)
        self.check("rtc_base_of_" + self.skewed, skew)
        for node in self.nodes:
            self.wait(f"{node.name} /healthz", lambda n=node: self.api(n, "/healthz"), 1500)
            self.step(f"boot_to_healthy_{node.name}_s", t0)
        self.step("boot_three_s", t0)

    # -- 5. the checks, no Ansible ---------------------------------------------------
    def check_identity(self) -> None:
        for node in self.nodes:
            health = self.api(node, "/healthz")
            hostname = self.ssh(node, "hostname").strip()
            addrs = self.ssh(node, "ip -4 -o addr show")
            if health["node"] != node.name or hostname != node.name:
                raise Failed(f"{node.name}: hostname {hostname!r}, agent says {health['node']!r}")
            if f" {node.address}/16 " not in addrs:
                raise Failed(f"{node.name}: mesh address {node.address}/16 missing:\n{addrs}")
        self.check("hostnames_and_addresses", True)

    def check_mesh(self) -> None:
        t0 = time.monotonic()
        want_neighbours = {
            NODES[0]: {NODES[1]},
            NODES[1]: {NODES[0], NODES[2]},
            NODES[2]: {NODES[1]},
        }

        def neighbours_ok() -> bool:
            for node in self.nodes:
                up = {
                    n["name"]
                    for n in self.api(node, "/v1/neighbors")["neighbors"]
                    if n["state"] == "up"
                }
                if up != want_neighbours[node.name]:
                    return False
            return True

        def topology_ok() -> bool:
            for node in self.nodes:
                topo = self.api(node, "/v1/topology")
                nodes = {n["name"] for n in topo["nodes"]}
                edges = {frozenset((e["a"], e["b"])) for e in topo["edges"]}
                if nodes != set(NODES) or edges != {frozenset(NODES[:2]), frozenset(NODES[1:])}:
                    return False
            return True

        self.wait("every node's neighbours", neighbours_ok, 600)
        self.step("neighbours_s", t0)
        self.check(
            "neighbours",
            {
                n.name: sorted(x["name"] for x in self.api(n, "/v1/neighbors")["neighbors"])
                for n in self.nodes
            },
        )
        self.wait("the whole topology on every node (adverts verified)", topology_ok, 600)
        self.step("topology_s", t0)
        rejected = {}
        for node in self.nodes:
            metrics = self.get(node, "/metrics")
            accepted = sum(
                float(x.split()[-1])
                for x in metric_lines(metrics, "meshcore_adverts_accepted_total")
            )
            if accepted < 2:
                raise Failed(f"{node.name}: only {accepted} adverts accepted")
            rejected[node.name] = {
                re.search(r'reason="([^"]+)"', x).group(1): float(x.split()[-1])  # type: ignore[union-attr]
                for x in metric_lines(metrics, "meshcore_adverts_rejected_total")
                if float(x.split()[-1]) > 0
            }
        self.check("adverts_rejected", rejected)
        path = self.api(self.nodes[0], f"/v1/paths/{NODES[2]}")
        self.check("path_1_to_3", path)

    def route_evidence(self, node: Node, dst: Node) -> str:
        """What explains a wrong route on *node*: the kernel's routes to *dst* and the
        agent's events of the last two minutes (a link declared dead withdraws routes)."""
        parts = []
        with contextlib.suppress(Failed, OSError, ValueError, subprocess.TimeoutExpired):
            parts.append("routes: " + self.ssh(node, f"ip -4 route show {dst.address}").strip())
        with contextlib.suppress(Failed, OSError, ValueError, subprocess.TimeoutExpired):
            events = self.api(node, f"/v1/events?since={time.time() - 120:.0f}&limit=30")
            items = events.get("events", events) if isinstance(events, dict) else events
            parts.append("events: " + json.dumps(items)[:3000])
        return "".join(f"\n{p}" for p in parts)

    def check_ping(self) -> None:
        n1, n2, n3 = self.nodes
        # A clean run of 5 is the claim; one datagram lost between emulated NICs on
        # a loaded host is not the mesh's, so up to 3 runs, each one recorded.
        runs = []
        for _ in range(3):
            out = self.ssh(n1, f"ping -c 5 -i 0.5 -W 2 -I {n1.address} {n3.address}")
            loss = re.search(r"(\d+(?:\.\d+)?)% packet loss", out)
            runs.append(loss.group(1) + "%" if loss else "?")
            if " 0% packet loss" in out:
                break
        else:
            raise Failed(f"ping {n1.name} -> {n3.name} lost packets in 3 runs {runs}:\n{out}")
        if self.backend == "native":
            route = self.ssh(n1, f"ip -4 route get {n3.address}")
            if f"via {n2.address} " not in route:
                raise Failed(
                    f"{n1.name}'s route to {n3.address} is not through {n2.name}: {route}"
                    + self.route_evidence(n1, n3)
                )
            via = route.strip()
        else:
            # batman-adv routes at layer 2: node 3's originator is reached through node 2's MAC.
            origs = json.loads(self.ssh(n1, "sudo batctl meshif bat0 originators_json"))
            n3_macs = {
                f"02:{i:02x}:" + ":".join(f"{int(b):02x}" for b in n3.address.split("."))
                for i in (1, 2)
            }
            n2_macs = {
                f"02:{i:02x}:" + ":".join(f"{int(b):02x}" for b in n2.address.split("."))
                for i in (1, 2)
            }
            best = [o for o in origs if o.get("orig_address") in n3_macs and o.get("best")]
            if not best or best[0]["neigh_address"] not in n2_macs:
                raise Failed(
                    f"{n1.name}: batman-adv does not route to {n3.name} through {n2.name}: {best}"
                )
            via = best[0]
        self.check("ping_1_to_3", {"runs": runs, "via": via})

    def check_clock(self) -> None:
        skewed = next(n for n in self.nodes if n.name == self.skewed)

        def close() -> float | None:
            offset = abs(float(self.ssh(skewed, "date +%s.%N")) - time.time())
            return offset if offset < 10 else None

        t0 = time.monotonic()
        offset = self.wait(f"{self.skewed}'s clock stepped from {TIME_SERVER}", close, 600)
        self.step("skewed_clock_fixed_s", t0)
        tracking = self.ssh(skewed, "chronyc -n tracking")
        self.check(
            "skewed_clock",
            {
                "offset_s": round(offset, 3),
                "tracking": tracking.splitlines()[:3],
            },
        )

    def check_prometheus(self) -> None:
        prom = shutil.which("prometheus")
        if prom is None:
            raise Failed("prometheus is not installed (requirements/apt.txt, make setup)")
        pdir = self.dir / "prometheus"
        pdir.mkdir(exist_ok=True)
        port = free_port()
        jobs = {"mesh_agent": "api", "node_exporter": "node_exporter"}
        config = {
            # node_exporter on a TCG-emulated Pi took over 5 s per scrape at load 7-11
            # (every scrape timed out, so "up" stayed 0): Prometheus's default 15 s
            # interval, with a timeout just under it.
            "global": {"scrape_interval": "15s", "scrape_timeout": "14s"},
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{getattr(n, attr)}"], "labels": {"node": n.name}}
                        for n in self.nodes
                    ],
                }
                for job, attr in jobs.items()
            ],
        }
        (pdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        with (pdir / "prometheus.log").open("wb") as out:
            self.prometheus = subprocess.Popen(
                [
                    prom,
                    f"--config.file={pdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={pdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        base = f"http://127.0.0.1:{port}/api/v1/query?query="

        def scraped() -> dict[str, Any] | None:
            status, body = http_get(base + "up")
            if status != 200:
                return None
            up = {
                (r["metric"]["job"], r["metric"]["node"]): r["value"][1]
                for r in json.loads(body)["data"]["result"]
            }
            if len(up) != 6 or set(up.values()) != {"1"}:
                return None
            _, body = http_get(base + "meshcore_topology_nodes")
            nodes = {r["metric"]["node"]: r["value"][1] for r in json.loads(body)["data"]["result"]}
            return (
                {"up": len(up), "topology_nodes": nodes} if set(nodes.values()) == {"3"} else None
            )

        t0 = time.monotonic()
        self.check("prometheus", self.wait("Prometheus scraping all three", scraped, 300))
        self.step("prometheus_scrapes_s", t0)

    def check_link_stability(self, soak_s: float) -> None:
        """Leave the quiet line alone for *soak_s* seconds, then count each agent's
        ``link_down`` events by reason, since boot and during the soak. Nothing is
        cut in this lab, so every one is a false death. The split uses the event
        log's ids (node 3's clock is stepped during the run, so wall times would not
        do)."""
        marks = {
            n.name: int(self.api(n, "/v1/events?limit=1").get("newest_id") or 0) for n in self.nodes
        }
        t0 = time.monotonic()
        while time.monotonic() - t0 < soak_s:
            time.sleep(min(60.0, soak_s - (time.monotonic() - t0)))
            log(
                f"{self.backend}: soak {time.monotonic() - t0:.0f}/{soak_s:.0f} s"
                f" (load {load_average()})"
            )
        out: dict[str, Any] = {}
        for node in self.nodes:
            body = self.api(node, f"/v1/events?after=0&kind=link_down&limit={EVENTS_LIMIT}")
            out[node.name] = link_downs(body.get("events", []), marks[node.name])
            out[node.name]["log_gap"] = bool(body.get("gap"))
        self.check("link_downs", {"soak_s": soak_s, "per_node": out})
        if soak_s:
            self.step("soak_s", t0)

    def set_host_vars(self, node: Node, values: dict[str, Any]) -> None:
        """Add *values* to the node's host_vars file in the site copy."""
        path = self.inventory / "host_vars" / f"{node.name}.yml"
        path.parent.mkdir(exist_ok=True)
        current = yaml.safe_load(path.read_text()) if path.exists() else None
        path.write_text("---\n" + yaml.safe_dump({**(current or {}), **values}))

    # -- 6. site.yml over ssh --------------------------------------------------------
    def site_yml(self) -> None:
        # The host's Prometheus has proved its point; its node_exporter scrapes cost the
        # emulated Pis seconds of CPU every 15 s, which site.yml's modules need.
        self.stop_prometheus()
        for node in self.nodes:
            self.set_host_vars(
                node,
                {
                    "ansible_host": "127.0.0.1",
                    "ansible_port": node.ssh,
                    "ansible_ssh_private_key_file": str(self.key),
                    "ansible_ssh_common_args": (
                        "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no"
                    ),
                },
            )
        env = operator_env(ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
        recaps = []
        for run in (1, 2):
            t0 = time.monotonic()
            text = self.run(
                [
                    str(ROOT / ".venv/bin/ansible-playbook"),
                    "-i",
                    str(self.inventory),
                    str(ROOT / "playbooks/site.yml"),
                    # Fresh cards, nothing to protect: one batch, not the waves of
                    # vars/rollout.yml (1, 1, 1 here), which would triple each run.
                    "-e",
                    '{"mesh_node_serial": ["100%"]}',
                ],
                f"site-yml-{run}",
                timeout=3600,
                env=env,
            )
            self.step(f"site_yml_run{run}_s", t0)
            recap = {
                m.group(1): int(m.group(2))
                for m in re.finditer(
                    r"^(starter-0\d)\s+: ok=\d+\s+changed=(\d+)", text, re.MULTILINE
                )
            }
            recaps.append(recap)
            self.check(f"site_yml_run{run}_changed_tasks", changed_tasks(text))
        self.check("site_yml_changed", recaps)
        # A flashed card is already what site.yml makes (docs/hw-lab.md): the first run
        # on fresh cards must change nothing either, and the second proves idempotence.
        for run, recap in enumerate(recaps, 1):
            if set(recap) != set(NODES) or any(recap.values()):
                raise Failed(f"site.yml run {run} on the flashed cards changed something: {recap}")

    # -- teardown ---------------------------------------------------------------------
    def stop_prometheus(self) -> None:
        if self.prometheus is not None and self.prometheus.poll() is None:
            self.prometheus.terminate()
            try:
                self.prometheus.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.prometheus.kill()
                self.prometheus.wait()

    def stop(self, keep: bool) -> None:
        self.stop_prometheus()
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            if keep:
                log(
                    f"kept {node.name}: ssh -p {node.ssh} -i {self.key} meshadmin@127.0.0.1;"
                    f" stop: kill {node.proc.pid}"
                )
                continue
            os.killpg(node.proc.pid, signal.SIGTERM)
            try:
                node.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait()

    def run_all(
        self, keep: bool, site_yml: bool, intr: Interrupts | None = None, soak_s: float = 0.0
    ) -> dict[str, Any]:
        """Every step; *intr* (:func:`meshcore_tools.interrupts.interrupts`) turns the first
        SIGINT/SIGTERM into a stop, and keeps any signal from cutting the cleanup short."""
        t_all = time.monotonic()
        ok, error = False, ""
        try:
            self.write_site()
            self.image_and_seeds()
            self.boot()
            self.check_identity()
            self.check_mesh()
            self.check_ping()
            self.check_clock()
            self.check_prometheus()
            self.check_link_stability(soak_s)
            if site_yml:
                self.site_yml()
            ok = True
        except (Failed, subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
            if isinstance(exc, KeyboardInterrupt):
                signum = intr.signum if intr is not None else None
                exc = Failed(f"interrupted by {signal.Signals(signum or signal.SIGINT).name}")
            error = str(exc)
            log(f"{self.backend}: FAILED: {error}")
            for node in self.nodes:
                serial = node.workdir / "serial.log"
                if serial.exists():
                    log(
                        f"{node.name} serial console (tail):\n"
                        + serial.read_text(errors="replace")[-1500:]
                    )
        finally:
            if intr is not None:
                intr.armed = False  # a signal now is counted, never raised
            self.stop(keep)
            if intr is not None and not intr.received:
                intr.armed = True
        self.steps["total_s"] = round(time.monotonic() - t_all, 1)
        result = {
            "figure": "three emulated Pis (qemu-system-aarch64 TCG) seeded by make seed",
            "backend": self.backend,
            "site_yml": site_yml,
            "ok": ok,
            "error": error,
            "steps_s": self.steps,
            "checks": self.checks,
            "load_average_1m_end": load_average(),
            "cpus": os.cpu_count(),
        }
        (self.dir / "result.json").write_text(
            json.dumps(result, indent=2, sort_keys=True, default=str) + "\n"
        )
        return result


def link_downs(events: list[dict[str, Any]], mark: int) -> dict[str, Any]:
    """``link_down`` events counted by reason: all of them (``from_boot``) and those
    after event id *mark* (``soak``)."""
    total: dict[str, int] = {}
    soak: dict[str, int] = {}
    for ev in events:
        if ev.get("kind") != "link_down":
            continue
        reason = str(ev.get("reason") or "unknown")
        total[reason] = total.get(reason, 0) + 1
        if int(ev.get("id", 0)) > mark:
            soak[reason] = soak.get(reason, 0) + 1
    return {"from_boot": total, "soak": soak}


def changed_tasks(text: str) -> dict[str, list[str]]:
    """The tasks an ansible-playbook log reports ``changed`` for, per host."""
    out: dict[str, list[str]] = {}
    task = ""
    for line in text.splitlines():
        m = re.match(r"^TASK \[(.*)\] \*", line)
        if m:
            task = m.group(1)
            continue
        m = re.match(r"^changed: \[([^\]]+)\]", line)
        if m:
            out.setdefault(m.group(1), []).append(task)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backend", choices=("native", "batman", "both"), default="both")
    ap.add_argument("--workdir", type=Path, default=ROOT / "build/hw-lab")
    ap.add_argument("--keep", action="store_true", help="leave the VMs running at the end")
    ap.add_argument("--no-site-yml", action="store_true", help="skip the site.yml runs")
    ap.add_argument(
        "--site-yml-on",
        default="native",
        help="comma-separated backends whose run ends with site.yml twice (default: native;"
        " 'native,batman' for both: about an hour per run under TCG)",
    )
    ap.add_argument("--skewed", choices=NODES, default=SKEWED, help="the node a year behind")
    ap.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the checks, leave the quiet mesh alone this long and count the agents'"
        " false link deaths (check link_downs); default 0: count those since boot only",
    )
    args = ap.parse_args()
    # Absolute: the key's path goes to make seed, whose playbook's lookups resolve a
    # relative path against the playbook's directory, not the shell's.
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    backends = ("native", "batman") if args.backend == "both" else (args.backend,)
    site_yml_on = {b.strip() for b in args.site_yml_on.split(",") if b.strip()}
    if args.soak < 0:
        ap.error("--soak: seconds, 0 or more")
    if site_yml_on - {"native", "batman"}:
        ap.error(f"--site-yml-on: unknown backend(s) {sorted(site_yml_on - {'native', 'batman'})}")
    rc = 0
    # Both signals end the run through run_all's cleanup (a shell that started us in
    # the background may have left SIGINT ignored, and SIGTERM's default skips cleanup).
    with interrupts("hw-lab") as intr:
        for backend in backends:
            lab = Lab(backend, args.workdir, args.workdir, args.skewed)
            site_yml = not args.no_site_yml and backend in site_yml_on
            result = lab.run_all(args.keep, site_yml, intr, args.soak)
            print(json.dumps(result, sort_keys=True, default=str), flush=True)
            rc |= 0 if result["ok"] else 1
            if intr is not None and intr.received:
                return 128 + 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
