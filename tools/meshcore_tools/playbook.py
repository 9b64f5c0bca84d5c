"""A playbook of this checkout run with ansible-runner, which Ctrl-C stops cleanly.

ansible-runner's ``run()``, called from the main thread without a ``cancel_callback``,
installs its own SIGINT and SIGTERM handlers (they set a flag its loop polls) and never
puts the old ones back: a bench or a tool that ran one playbook then ignored Ctrl-C for
the rest of its life. And runner cancels with SIGKILL to ansible-playbook's process
group, which misses Ansible's workers: each worker calls ``setsid``, so a worker and the
module it runs went on, orphaned, after the run was reported cancelled.

:func:`run_playbook` is the one way the tools and the testkit run a playbook in-process.
While it runs, the first SIGINT or SIGTERM is forwarded to ansible-playbook as SIGINT,
Ansible's own way to stop: it signals every worker's process group (a module running
locally, or the ssh of a remote one) and exits. If it has not exited after
:data:`GRACE_S`, or at a second signal, runner kills it. When :func:`run_playbook`
returns, the handlers from before are back and the result says which signal stopped the
run; :meth:`PlaybookRun.deliver` then hands that signal to those handlers, so the caller
stops as it would have without the playbook, only after ansible-playbook is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshcore_tools import ROOT

# How long ansible-playbook has to stop its workers after the forwarded SIGINT, before
# runner kills it (runner polls the cancellation between reads of the playbook's output,
# every few seconds at most)
GRACE_S = 15.0
# Where ansible-playbook is looked for among this process's children. A controller
# without it (macOS) forwards nothing: runner kills ansible-playbook after GRACE_S.
PROC = Path("/proc")


def runner_path() -> str:
    """PATH for ansible-runner with this Python's bin directory (the venv's) first: runner
    finds ansible-playbook on PATH, which lacks the venv when it is not activated."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


@dataclass(frozen=True)
class PlaybookRun:
    """What came of a run: ansible-playbook's ``rc`` (Ansible's 99 when it stopped at the
    forwarded SIGINT, 254 when runner killed it), runner's ``status`` (successful, failed,
    canceled, timeout) and ``signum``, the SIGINT or SIGTERM that stopped it, if one did."""

    rc: int
    status: str
    signum: int | None = None

    @property
    def canceled(self) -> bool:
        return self.signum is not None

    def deliver(self) -> None:
        """Raise the signal that cancelled the run, now that the handlers from before the
        run are back (SIGINT's default raises KeyboardInterrupt). Nothing if none did."""
        if self.signum is not None:
            signal.raise_signal(self.signum)


def run_playbook(playbook: str | Path, inventory: str | Path, private_data_dir: str | Path, *,
                 extravars: Mapping[str, Any] | None = None, limit: str | None = None,
                 event_handler: Callable[[dict[str, Any]], bool] | None = None,
                 envvars: Mapping[str, str] | None = None, quiet: bool = True) -> PlaybookRun:
    """*playbook* (relative to the checkout, or absolute) on *inventory*, with ansible-runner,
    its artifacts under *private_data_dir* (made if missing); ``ANSIBLE_CONFIG`` is the
    checkout's and PATH has this Python's venv first unless *envvars* says otherwise."""
    import ansible_runner  # imported here: only the callers that run playbooks need it

    Path(private_data_dir).mkdir(parents=True, exist_ok=True)
    cancel = _Cancel()
    before: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        before = {s: signal.signal(s, cancel.signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        r = ansible_runner.run(
            private_data_dir=str(private_data_dir), project_dir=str(ROOT),
            playbook=str(ROOT / playbook), inventory=str(inventory),
            extravars=dict(extravars or {}), limit=limit,
            envvars={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "PATH": runner_path(),
                     **(envvars or {})},
            event_handler=event_handler, quiet=quiet,
            # given, runner installs no signal handlers of its own (and so leaves none behind)
            cancel_callback=cancel.poll)
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    return PlaybookRun(int(r.rc), str(r.status), cancel.received[0] if cancel.received else None)


class _Cancel:
    """The signal handler while a playbook runs, and runner's ``cancel_callback``."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.forwarded_at: float | None = None

    def signal(self, signum: int, frame: object) -> None:
        self.received.append(signum)

    def poll(self) -> bool:
        """True once runner should kill ansible-playbook: a second signal, or the grace
        after the first one's forwarded SIGINT has passed."""
        if not self.received:
            return False
        if self.forwarded_at is None:
            self.forwarded_at = time.monotonic()
            for pid in _playbooks():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)
            return False
        return len(self.received) > 1 or time.monotonic() - self.forwarded_at > GRACE_S


def _playbooks() -> list[int]:
    """This process's children that are ansible-playbook (runner's pexpect child)."""
    me, found = os.getpid(), []
    try:
        procs = list(PROC.iterdir())
    except OSError:
        return []
    for proc in procs:
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (proc / "cmdline").read_bytes().split(b"\0")[:2] if ppid == me else []
        except (OSError, ValueError, IndexError):
            continue
        if any(a.endswith(b"ansible-playbook") for a in argv):
            found.append(int(proc.name))
    return found
