"""The node side of a chaos fault: journal, owned operations, reaper.

A fault reaches a node as a list of operations (:mod:`.ops`). The node writes
it to its journal (:mod:`.journal`) with a deadline *before* applying any of
it, and a reaper (:mod:`.reaper`, run by a transient systemd timer on
hardware or as a small loop process in the lab) undoes it at that deadline,
whatever happened to the controller. Every rule, qdisc, cgroup, link alias and
process a fault creates carries the owned tag ``meshcore_chaos`` (or the owned
tc handle ``c4a0:``), so a rollback finds it and touches nothing else.
"""

import signal


class StopSignals:
    """A service loop's exit condition: ``requested`` turns true on SIGTERM or SIGINT.

    Installs its handlers when made; the loop finishes its current pass and
    returns, so what it writes last (a journal line, the recorder's summary) is
    still written.
    """

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, *_: object) -> None:
        self.requested = True
