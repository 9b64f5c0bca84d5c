"""Booting an rpi-arm64 card image under qemu-system-aarch64 (TCG): shared helpers.

Used by :mod:`meshcore_tools.image.boot_test` (one card) and
:mod:`meshcore_tools.hwlab` (three emulated Pis). The real Pi boot path (GPU
firmware, config.txt, Pi device trees) cannot be emulated here: a card boots
its own kernel and initrd, read out of its boot partition with mtools, on
QEMU's virt machine, from the same disk image, with the console moved to the
virt board's PL011 UART.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

from meshcore_tools import ROOT

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def operator_env(**extra: str) -> dict[str, str]:
    """The environment an operator's shell gives ``ansible-playbook`` in this checkout.

    A caller that runs under molecule (or any other Ansible run) inherits its
    ANSIBLE_* settings, which override the project's ansible.cfg: its filter
    plugins, roles path and callbacks would be missing. So those are dropped,
    and ANSIBLE_CONFIG names the project's file (``make seed`` reads it from
    the checkout's root).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env.update(extra)
    return env


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


def metric_lines(text: str, name: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    ]


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
    names = subprocess.run(
        ["mdir", "-b", "-i", target, "::/"],
        capture_output=True,
        text=True,
        check=True,
        env=MTOOLS_ENV,
    ).stdout
    files = [Path(n.strip()).name for n in names.splitlines() if n.strip()]
    kernel = sorted(f for f in files if f.startswith("vmlinuz-"))[-1]
    initrd = sorted(f for f in files if f.startswith("initrd.img-"))[-1]
    for name in (kernel, initrd, "cmdline.txt"):
        subprocess.run(
            ["mcopy", "-o", "-i", target, f"::/{name}", str(dest / name)],
            check=True,
            env=MTOOLS_ENV,
        )
    return dest / kernel, dest / initrd, (dest / "cmdline.txt").read_text().strip()


def qemu_argv(
    image: Path,
    workdir: Path,
    *,
    netdevs: list[tuple[str, str]],
    smp: int = 2,
    memory_mb: int = 1024,
    rtc_base: str | None = None,
) -> list[str]:
    """QEMU TCG command line booting *image*'s own kernel from its boot partition.

    *netdevs*: (netdev options, device MAC) pairs, one virtio-net-pci NIC each,
    in PCI slot order, so the guest (net.ifnames=0 on the card's cmdline) names
    them eth0, eth1, ... in this order.
    """
    kernel, initrd, cmdline = boot_files(image, workdir)
    # The virt board's console is the PL011 UART (ttyAMA0); the Pi's names do not exist there.
    cmdline = " ".join(
        [w for w in cmdline.split() if not w.startswith("console=")]
        + ["console=ttyAMA0", "panic=-1"]
    )
    argv = [
        "qemu-system-aarch64",
        "-M",
        "virt",
        "-cpu",
        "cortex-a72",
        "-smp",
        str(smp),
        "-m",
        str(memory_mb),
        "-accel",
        "tcg,thread=multi",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{workdir / 'serial.log'}",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initrd),
        "-append",
        cmdline,
        "-drive",
        f"if=none,file={image},format=raw,id=hd0",
        "-device",
        "virtio-blk-device,drive=hd0",
    ]
    for i, (netdev, mac) in enumerate(netdevs):
        # romfile= : no PXE option ROM (the card boots its own kernel; ipxe-qemu not needed).
        argv += [
            "-netdev",
            f"{netdev},id=n{i}",
            "-device",
            f"virtio-net-pci,netdev=n{i},mac={mac},romfile=",
        ]
    if rtc_base:
        argv += ["-rtc", f"base={rtc_base}"]
    return argv


def start(argv: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    """Start QEMU in its own session (so a kept VM outlives its caller's step)."""
    with (workdir / "qemu.err").open("wb") as err:
        return subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, cwd=workdir
        )


def load_average() -> float:
    return round(os.getloadavg()[0], 2)
