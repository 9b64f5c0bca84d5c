"""The echo socket on a real veth between two namespaces (root): the answers to our
probes are read, and the answers to a ping the node itself sends are dropped in the
kernel (:func:`mesh_agent.link.sockets._echo_filter`), so they never queue beside ours
and take a tick's read budget. A raw ICMP socket with only the type filter, opened on
the same interface, gets both: the filter is what makes the difference."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
from meshcore_testkit.marks import requires_root
from meshcore_tools import netns

from mesh_agent.link.sockets import _ECHO_REPLY_ONLY, ICMP_FILTER, SOL_RAW, echo_socket
from mesh_agent.link.wire import EchoProbe, WireError, decode_echo_reply, encode_echo_request


def drain(s: socket.socket) -> tuple[list[int], int]:
    """(the seqs of our replies, the number of other packets) queued on *s*."""
    ours: list[int] = []
    foreign = 0
    while True:
        try:
            data = s.recv(65535)
        except BlockingIOError:
            return ours, foreign
        try:
            ours.append(decode_echo_reply(data).seq)
        except WireError:
            foreign += 1


@requires_root
@pytest.mark.skipif(shutil.which("ping") is None, reason="needs iputils ping")
def test_only_our_echo_replies_reach_the_echo_socket() -> None:
    a, b = netns.run_tag("echa"), netns.run_tag("echb")
    netns.add(a)
    netns.add(b)
    try:
        netns.veth(a, "ea0", b, "eb0", "10.99.7.1/31", "10.99.7.0/31")
        with netns.entered(a):
            ours_sock = echo_socket("ea0")
            plain = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        assert ours_sock is not None
        plain.setsockopt(SOL_RAW, ICMP_FILTER, _ECHO_REPLY_ONLY)
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"ea0")
        plain.setblocking(False)
        try:
            # a ping from the node itself, its answers coming in on ea0
            subprocess.run(netns.exec_argv(a, "ping", "-c", "20", "-i", "0.01", "-W", "1",
                                           "10.99.7.0"), check=True, capture_output=True,
                           timeout=30)
            for seq in range(1, 6):
                ours_sock.sendto(encode_echo_request(EchoProbe(0x4D43, seq, 1000 + seq)),
                                 ("10.99.7.0", 0))
            time.sleep(0.5)
            assert drain(ours_sock) == ([1, 2, 3, 4, 5], 0)
            seqs, foreign = drain(plain)
            assert seqs == [1, 2, 3, 4, 5] and foreign == 20
        finally:
            ours_sock.close()
            plain.close()
    finally:
        netns.delete(a, b)
