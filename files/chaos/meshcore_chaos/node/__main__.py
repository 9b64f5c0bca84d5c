"""``python3 -m meshcore_chaos.node``: what the controller runs on a node (or in a lab namespace).

    inject    --id ID --experiment E --fault CLASS --deadline EPOCH [--timer systemd|none]
              operations as a JSON list on stdin; journal first, then apply
    remove    --id ID            undo one fault (nothing on record: nothing to do)
    reap                         undo every fault past its deadline or from another boot
    reaper    [--interval S]     reap in a loop (the lab's stand-in for the systemd timer)
    rollback                     undo every fault on record, then remove anything tagged
    leftovers                    list what is on record or tagged (JSON); exit 1 if any

Each prints one JSON line. ``--journal DIR`` (default /var/lib/meshcore-chaos).
On hardware ``inject --timer systemd`` also starts a transient timer
(``systemd-run --on-active``) that runs ``reap`` at the deadline, so the fault
goes even if the controller never comes back; the chaos_reaper role adds a
boot-time reap and a periodic one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshcore_chaos.node import StopSignals, ops, reaper
from meshcore_chaos.node.journal import DEFAULT_DIR, Entry, Journal, boot_id


def out(**fields: Any) -> None:
    print(json.dumps(fields, sort_keys=True), flush=True)


def remove_entry(journal: Journal, entry: Entry) -> list[str]:
    """Undo an entry's operations in reverse order, then forget it; the errors met."""
    errors = []
    for op in reversed(entry.ops):
        try:
            ops.undo(op)
        except (ops.OpError, OSError, KeyError, ValueError) as exc:
            errors.append(f"{op.get('op')}: {exc}")
    if not errors:
        journal.delete(entry.id)
    return errors


def start_timer(a: argparse.Namespace, delay: float) -> None:
    """A transient systemd timer that reaps this journal at the deadline (hardware)."""
    root = Path(__file__).resolve().parents[2]  # what PYTHONPATH must name
    subprocess.run(
        ["systemd-run", "--quiet", "--collect", f"--unit=meshcore-chaos-reap-{a.id}",
         f"--on-active={max(1, int(delay + 1))}s", f"--setenv=PYTHONPATH={root}",
         sys.executable, "-m", "meshcore_chaos.node",
         "--journal", str(a.journal), "reap"], check=True, capture_output=True)


def cmd_inject(a: argparse.Namespace, journal: Journal) -> int:
    if not ops.ID_RE.match(a.id):
        out(ok=False, error=f"bad fault id {a.id!r}")
        return 2
    now = time.time()
    why = reaper.check_deadline(a.deadline, now)
    if why:
        out(ok=False, id=a.id, error=why)
        return 2
    plan: list[dict[str, Any]] = json.loads(sys.stdin.read())
    try:
        for op in plan:
            ops.check(op, a.id)
    except ops.OpError as exc:
        out(ok=False, id=a.id, error=str(exc))
        return 2
    with journal.locked():
        if journal.read(a.id) is not None:
            out(ok=False, id=a.id, error="a fault with this id is already on record")
            return 2
        entry = Entry(a.id, a.experiment, a.fault, a.deadline, boot_id(), now, plan)
        try:
            for op in plan:
                op.update(ops.prepare(op, a.id))
        except (ops.OpError, OSError) as exc:
            out(ok=False, id=a.id, error=str(exc))
            return 1
        journal.write(entry)  # on record, with its deadline, before anything changes
        if a.timer == "systemd":
            start_timer(a, a.deadline - now)
        try:
            for op in plan:
                op.update(ops.apply(op))
                journal.write(entry)
        except (ops.OpError, OSError) as exc:
            errors = remove_entry(journal, entry)
            out(ok=False, id=a.id, error=str(exc), undo_errors=errors)
            return 1
        entry.state = "active"
        journal.write(entry)
    out(ok=True, id=a.id, applied_at=now, ops=plan)
    return 0


def cmd_remove(a: argparse.Namespace, journal: Journal) -> int:
    with journal.locked():
        entry = journal.read(a.id)
        errors = remove_entry(journal, entry) if entry else []
    out(ok=not errors, id=a.id, was_on_record=entry is not None, errors=errors)
    return 0 if not errors else 1


def reap_once(journal: Journal) -> list[dict[str, Any]]:
    """Undo what is due; then remove tagged state no record accounts for (an orphan: a
    journal lost or corrupted). Under the journal's lock, so an injection in progress
    is always on record before its first change."""
    done = []
    with journal.locked():
        entries = {e.id: e for e in journal.entries()}
        for d in reaper.due(entries.values(), time.time(), boot_id()):
            errors = remove_entry(journal, entries[d.id])
            done.append({"id": d.id, "reason": d.reason, "errors": errors})
        known: set[str] = set()
        for e in journal.entries():
            known |= ops.owners(e.ops, e.id)
        for t in ops.tagged():
            if t.owner not in known:
                try:
                    t.remove()
                    done.append({"id": t.owner, "reason": "orphan", "errors": [], "what": t.what})
                except (ops.OpError, OSError) as exc:
                    done.append({"id": t.owner, "reason": "orphan", "errors": [str(exc)]})
    return done


def cmd_reap(a: argparse.Namespace, journal: Journal) -> int:
    done = reap_once(journal)
    out(ok=all(not d["errors"] for d in done), reaped=done)
    return 0


def cmd_reaper(a: argparse.Namespace, journal: Journal) -> int:
    stop = StopSignals()
    out(ok=True, reaper="started", journal=str(journal.dir), pid=os.getpid())
    while not stop.requested:
        for d in reap_once(journal):
            out(reaped=d, at=time.time())
        time.sleep(reaper.next_wakeup(journal.entries(), time.time(), a.interval) or 0.01)
    return 0


def cmd_rollback(a: argparse.Namespace, journal: Journal) -> int:
    with journal.locked():
        removed = []
        errors: list[str] = []
        for entry in journal.entries():
            errors += remove_entry(journal, entry)
            removed.append(entry.id)
        swept = []
        for t in ops.tagged():
            try:
                t.remove()
                swept.append(t.what)
            except (ops.OpError, OSError) as exc:
                errors.append(f"{t.what}: {exc}")
        left = leftovers(journal)
    out(ok=not errors and not left, removed=removed, swept=swept, errors=errors, left=left)
    return 0 if not errors and not left else 1


def leftovers(journal: Journal) -> list[str]:
    found = [f"journal {e.id} ({e.fault})" for e in journal.entries()]
    found += [t.what for t in ops.tagged()]
    found += [f"stopped process {pid}" for pid in ops.stopped_pids()]
    return found


def cmd_leftovers(a: argparse.Namespace, journal: Journal) -> int:
    left = leftovers(journal)
    out(ok=not left, left=left)
    return 0 if not left else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="meshcore_chaos.node", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--journal", type=Path, default=DEFAULT_DIR)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inject")
    i.add_argument("--id", required=True)
    i.add_argument("--experiment", required=True)
    i.add_argument("--fault", required=True)
    i.add_argument("--deadline", type=float, required=True)
    i.add_argument("--timer", choices=("none", "systemd"), default="none")
    r = sub.add_parser("remove")
    r.add_argument("--id", required=True)
    sub.add_parser("reap")
    loop = sub.add_parser("reaper")
    loop.add_argument("--interval", type=float, default=0.2)
    sub.add_parser("rollback")
    sub.add_parser("leftovers")
    a = p.parse_args(argv)
    journal = Journal(a.journal)
    handler = {"inject": cmd_inject, "remove": cmd_remove, "reap": cmd_reap,
               "reaper": cmd_reaper, "rollback": cmd_rollback, "leftovers": cmd_leftovers}
    return handler[a.cmd](a, journal)


if __name__ == "__main__":
    sys.exit(main())
