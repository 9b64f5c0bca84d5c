"""When the system clock is trustworthy enough to check certificate validity.

A Raspberry Pi has no real-time clock, and a disaster mesh may have no
internet: a node can boot with its clock a year off. Nothing in the protocol
compares a sender's timestamp with our clock (replay protection is by
per-origin sequence numbers, ageing by local receive time), so the only use of
wall time is a certificate's validity window, and checking it against a wrong
clock would reject every peer (clock behind: "not yet valid"; ahead: "expired").

The rule (``clock_trust`` in the agent config):

* ``synchronized`` (default): the clock is trusted once a time source says it
  is synchronised, i.e. ``clock_sync_file`` exists (systemd-timesyncd creates
  ``/run/systemd/timesync/synchronized`` at its first successful sync; /run is
  empty at every boot), and it is not earlier than the floor.
* ``always``: the clock is trusted whenever it is not earlier than the floor
  (a node with an RTC or GPS time).
* ``never``: validity windows are never checked (chain, SAN and signatures
  still are).

The floor is the newest ``notBefore`` of the trust bundle: a clock earlier than
the moment our own CA was made is certainly wrong. Once trusted, the clock stays
trusted for the life of the process unless it falls below the floor again.
Until then the agent logs why validity is not checked and exports
``meshcore_clock_trusted 0``.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger("mesh_agent.identity")

POLICIES = ("synchronized", "always", "never")
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


@dataclass
class ClockTrust:
    policy: str
    floor: dt.datetime
    trusted: bool = False

    def update(self, now: dt.datetime, synchronized: bool) -> bool:
        """Decide for *now* (the wall clock) given whether a time source says it is synced."""
        if self.policy not in POLICIES:
            raise ValueError(f"clock_trust: {self.policy!r} is not one of {', '.join(POLICIES)}")
        if self.policy == "never" or now < self.floor:
            self.trusted = False
        elif self.policy == "always" or synchronized:
            self.trusted = True
        return self.trusted

    def reason(self, now: dt.datetime) -> str:
        """Why the clock is not trusted (for the log), or '' when it is."""
        if self.trusted:
            return ""
        if self.policy == "never":
            return "clock_trust is never"
        if now < self.floor:
            floor = self.floor.isoformat()
            return f"the clock ({now.isoformat()}) is before the CA's notBefore ({floor})"
        return "no time source has synchronised the clock yet"


class Checks(Protocol):
    check_validity: bool


def refresh(
    trust: ClockTrust, identity: Checks, wall: float, sync_file: Path, start: bool = False
) -> None:
    """Decide again (the sync flag, the wall clock) and apply it to the identity's checks.

    The agent calls this at start (``start``: the state is logged whatever it
    is) and on every housekeeping tick (logged when it changes).
    """
    was = trust.trusted
    now = dt.datetime.fromtimestamp(wall, dt.UTC)
    try:
        synced = sync_file.exists()
    except OSError:
        synced = False
    identity.check_validity = trust.update(now, synced)
    if trust.trusted != was or start:
        if trust.trusted:
            log.info("clock trusted (%s): certificate validity checked", trust.policy)
        else:
            log.warning("clock not trusted (%s): certificate validity is not checked",
                        trust.reason(now))
