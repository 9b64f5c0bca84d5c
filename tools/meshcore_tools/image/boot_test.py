"""Boot the rpi-arm64 image under qemu-system-aarch64 (-M virt, TCG) with a seed.

The real Pi boot path (GPU firmware, config.txt, Pi device trees) cannot be
emulated here; this boots the image's own kernel and initrd (read from its
boot partition with mtools) on QEMU's virt machine, from the same disk image,
with a per-node NoCloud seed written by playbooks/flash.yml. It checks:

* cloud-init applied the seed's hostname: the kernel's nodename as node_exporter
  reports it (node_uname_info) and the login prompt on the serial console;
* the mesh agent's unit is active: /healthz answers through a forwarded port,
  with the node name from the seed's agent config;
* no systemd unit failed: node_exporter's systemd collector
  (node_systemd_unit_state{state="failed"}) and the system state.

Ports are forwarded on 127.0.0.1 only; the guest gets QEMU user networking with
restrict=on (no route out). Prints one JSON line with the figures.

    python -m meshcore_tools.image.boot_test [--image IMG] [--host NAME] [--timeout S]
    python -m meshcore_tools.image.boot_test --ssh-pubkey KEY.pub --keep STATE.json ...
                                                                      (molecule `image`)
    python -m meshcore_tools.image.boot_test --stop STATE.json

With --keep the checked VM is left running (its own session) and STATE.json
records its pid and forwarded ports, ssh among them when --ssh-pubkey put a key
into the seed; --stop powers it off. The molecule `image` scenario uses both.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from meshcore_tools import ROOT

DEFAULT_IMAGE = ROOT / "build/images/rpi-arm64/latest/mesh-core-rpi-arm64.img"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


def boot_partition_offset(image: Path) -> int:
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
        ).stdout
    )
    part = table["partitiontable"]["partitions"][0]
    return int(part["start"]) * int(table["partitiontable"].get("sectorsize", 512))


def boot_files(image: Path, dest: Path) -> tuple[Path, Path, str]:
    """Kernel, initrd and cmdline.txt from the image's boot partition (mtools, no mount)."""
    target = f"{image}@@{boot_partition_offset(image)}"
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    names = subprocess.run(
        ["mdir", "-b", "-i", target, "::/"], capture_output=True, text=True, check=True, env=env
    ).stdout
    files = [Path(n.strip()).name for n in names.splitlines() if n.strip()]
    kernel = sorted(f for f in files if f.startswith("vmlinuz-"))[-1]
    initrd = sorted(f for f in files if f.startswith("initrd.img-"))[-1]
    for name in (kernel, initrd, "cmdline.txt"):
        subprocess.run(
            ["mcopy", "-o", "-i", target, f"::/{name}", str(dest / name)], check=True, env=env
        )
    return dest / kernel, dest / initrd, (dest / "cmdline.txt").read_text().strip()


def metric_lines(text: str, name: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    ]


def stop(state_file: Path) -> int:
    """Power off a VM left running by --keep (SIGTERM: QEMU shuts down at once)."""
    if not state_file.exists():
        return 0
    pid = int(json.loads(state_file.read_text())["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    state_file.unlink()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--host", default="rpi-qemu-01")
    ap.add_argument("--address", default="10.77.0.250")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--workdir", type=Path, default=ROOT / "build/boot-test")
    ap.add_argument("--ssh-pubkey", type=Path, help="authorize this key for the seed's admin user")
    ap.add_argument("--keep", type=Path, help="leave the VM running; write its state here")
    ap.add_argument("--stop", type=Path, help="power off the VM recorded in this state file")
    args = ap.parse_args()
    if args.stop:
        return stop(args.stop)
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    # 1. A one-host inventory and its seed, written by the real flash playbook.
    (work / "inventory.yml").write_text(
        json.dumps(
            {
                "mesh_nodes": {
                    # The Pi fleet's link layer (inventories/example): the agent reads batman-adv.
                    "vars": {"mesh_link_backend": "batman"},
                    # The API listens on loopback and the management address only:
                    # QEMU's user network forwards to the guest's 10.0.2.15.
                    "hosts": {args.host: {"mesh_node_address": args.address,
                                          "mesh_mgmt_address": "10.0.2.15"}},
                }
            }
        )
    )
    extra = []
    if args.ssh_pubkey:
        keys = [args.ssh_pubkey.read_text().strip()]
        extra = ["-e", json.dumps({"flash_ssh_authorized_keys": keys})]
    t0 = time.monotonic()
    subprocess.run(
        [
            str(ROOT / ".venv/bin/ansible-playbook"),
            *extra,
            "-i",
            str(work / "inventory.yml"),
            str(ROOT / "playbooks/flash.yml"),
            "-e",
            f"flash_image={args.image}",
            "-e",
            f"flash_out_dir={work}",
            "-e",
            f"lab_pki_dir={work}/pki",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seed_s = time.monotonic() - t0
    node_img = work / f"{args.host}.img"
    kernel, initrd, cmdline = boot_files(node_img, work)
    # QEMU's virt board has a PL011 UART as ttyAMA0; the Pi's console names do not exist there.
    cmdline = " ".join(
        [w for w in cmdline.split() if not w.startswith("console=")]
        + ["console=ttyAMA0", "panic=-1"]
    )

    # 2. Boot it.
    api, nodeexp, ssh = free_port(), free_port(), free_port()
    serial = work / "serial.log"
    qemu = [
        "qemu-system-aarch64",
        "-M",
        "virt",
        "-cpu",
        "cortex-a72",
        "-smp",
        "2",
        "-m",
        "1024",
        "-accel",
        "tcg,thread=multi",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{serial}",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        cmdline,
        "-drive",
        f"if=none,file={node_img},format=raw,id=hd0",
        "-device",
        "virtio-blk-device,drive=hd0",
        "-netdev",
        f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{api}-:9105,"
        f"hostfwd=tcp:127.0.0.1:{nodeexp}-:9100,hostfwd=tcp:127.0.0.1:{ssh}-:22",
        "-device",
        "virtio-net-device,netdev=n0",
    ]
    result: dict[str, object] = {
        "figure": "rpi-arm64 boot under qemu TCG",
        "host": args.host,
        "seed_s": round(seed_s, 1),
    }
    t_boot = time.monotonic()
    # Its own session: with --keep it outlives this script (and molecule's step).
    with (work / "qemu.err").open("wb") as err:
        proc = subprocess.Popen(qemu, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    ok = False
    try:
        healthz = ""
        while time.monotonic() - t_boot < args.timeout and proc.poll() is None:
            status, healthz = http_get(f"http://127.0.0.1:{api}/healthz")
            if status == 200:
                result["boot_to_agent_healthy_s"] = round(time.monotonic() - t_boot, 1)
                break
            time.sleep(2)
        result["healthz"] = healthz
        # Wait for the boot to finish (running or degraded), then read the unit states.
        state, metrics = "", ""
        while time.monotonic() - t_boot < args.timeout and proc.poll() is None:
            _, metrics = http_get(f"http://127.0.0.1:{nodeexp}/metrics", timeout=20)
            running = metric_lines(metrics, "node_systemd_system_running")
            if running and running[0].split()[-1] == "1":
                state = "running"
                break
            log = serial.read_text(errors="replace") if serial.exists() else ""
            if (
                "Cloud-init v." in log
                and "finished at" in log
                and metrics
                and time.monotonic() - t_boot > 60
            ):
                # finished first boot but not "running": degraded; the failed units say why
                state = "not running"
                if metric_lines(metrics, "node_systemd_unit_state"):
                    break
            time.sleep(3)
        result["boot_to_system_running_s"] = round(time.monotonic() - t_boot, 1)
        result["system_state"] = state
        uname = metric_lines(metrics, "node_uname_info")
        found = re.search(r'nodename="([^"]*)"', uname[0]) if uname else None
        nodename = found.group(1) if found else ""
        failed = sorted(
            re.search(r'name="([^"]*)"', line).group(1)  # type: ignore[union-attr]
            for line in metric_lines(metrics, "node_systemd_unit_state")
            if 'state="failed"' in line and line.split()[-1] == "1"
        )
        agent_active = [
            line
            for line in metric_lines(metrics, "node_systemd_unit_state")
            if 'name="mesh-agent.service"' in line and 'state="active"' in line
        ]
        log = serial.read_text(errors="replace")
        result.update(
            nodename=nodename,
            failed_units=failed,
            agent_unit_active=bool(agent_active) and agent_active[0].split()[-1] == "1",
            serial_login_prompt=f"{args.host} login:" in log,
            serial_cloud_init_finished=bool(re.search(r"Cloud-init v\. \S+ finished at", log)),
        )
        health = json.loads(healthz) if healthz else {}
        ok = (
            health.get("status") == "ok"
            and health.get("node") == args.host
            and nodename == args.host
            and result["agent_unit_active"] is True
            and not failed
            and state == "running"
            and result["serial_login_prompt"] is True
        )
    finally:
        if ok and args.keep:
            kept = {
                "pid": proc.pid,
                "ssh_port": ssh,
                "api_port": api,
                "node_exporter_port": nodeexp,
                "host": args.host,
                "image": str(node_img),
            }
            args.keep.write_text(json.dumps(kept, sort_keys=True) + "\n")
            result.update(kept=True, ssh_port=ssh)
        else:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    result["ok"] = ok
    print(json.dumps(result, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
