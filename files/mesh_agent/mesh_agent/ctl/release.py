"""``meshctl release list|use|prune|install|confirm|confirm-watch|confirm-status``:
the node's installed agent releases.

These work on the node's files (``--root``, default ``/opt/mesh-agent``), not on the
agent's API. ``use`` switches ``current`` atomically and restarts the unit through
the ``restart`` callable :func:`run` is given (``systemctl restart mesh-agent``
from the command line; tests pass their own). A switch to a release this node has
not confirmed before is *armed* (:mod:`mesh_agent.release.watch`): unless the agent
is ready, sees its neighbours and reaches a controller or gateway within the window
(``/etc/mesh-agent/release-confirm.json``, at most 120 s), ``confirm-watch`` (run by
``mesh-release-confirm.service``) switches back by itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from mesh_agent.config import ConfigError, load_config
from mesh_agent.ctl.client import AgentUnreachable, ApiError, HttpClient, local_api_url
from mesh_agent.ctl.render import table
from mesh_agent.release import watch as watch_mod
from mesh_agent.release.confirm import ConfirmFormatError, as_dict
from mesh_agent.release.install import STATE_FILE, InstallRefused, install
from mesh_agent.release.store import ReleaseError, Releases
from mesh_agent.release.verify import ReleaseFormatError, TrustPolicy, parse_signatures

OK, BAD, USAGE = 0, 1, 2
DEFAULT_ROOT = Path("/opt/mesh-agent")
DEFAULT_KEYS = Path("/etc/mesh-agent/release-keys.json")
UNIT = "mesh-agent.service"


SYSLOG_SOCKET = Path("/dev/log")


def log_to_syslog(path: Path = SYSLOG_SOCKET) -> None:
    """Send ``mesh_agent.release`` records (installs and refusals, with the reason) to
    the node's journal, once; the terminal gets its own line from :func:`run`."""
    logger = logging.getLogger("mesh_agent.release")
    if logger.handlers or not path.exists():
        return
    handler = logging.handlers.SysLogHandler(address=str(path))
    handler.setFormatter(logging.Formatter("meshctl[%(process)d]: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def systemd_restart() -> None:
    # The unit is Type=notify: this returns once the new agent said READY=1, and fails
    # when it dies first (`use` still arms the commit-confirm, then reports the failure).
    subprocess.run(["systemctl", "restart", UNIT], check=True)


def add_parser(sub: Any) -> None:
    r = sub.add_parser("release",
                       help="installed agent releases: list, use, prune, install, confirm",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                   help="install root holding releases/ and current (%(default)s)")
    rs = r.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    rs.add_parser("list", help="installed releases, oldest first; * marks current")
    u = rs.add_parser("use", help="point current at release ID and restart the agent")
    u.add_argument("id")
    u.add_argument("--allow-wire-change", action="store_true",
                   help="switch even to a release of another (or unknown) wire version")
    u.add_argument("--no-restart", action="store_true", help="switch only; restart yourself")
    u.add_argument("--confirm-within", type=float, metavar="SECONDS",
                   help="revert unless confirmed within SECONDS (<= 120; default: "
                        "release-confirm.json's window_s, else 120)")
    u.add_argument("--no-confirm", action="store_true",
                   help="do not arm the commit-confirm (no automatic revert)")
    u.add_argument("--confirm-settings", type=Path, default=watch_mod.SETTINGS_FILE,
                   help="window, expected neighbours, reach targets (%(default)s)")
    u.add_argument("--wait-ready", type=float, default=0.0, metavar="SECONDS",
                   help="after the restart, wait up to SECONDS for the agent's /readyz "
                        "(a rolling switch restarts the next node only then)")
    rs.add_parser("confirm", help="confirm the pending switch by hand (no automatic revert)")
    rs.add_parser("confirm-status", help="the pending switch, confirmed releases, last outcome")
    w = rs.add_parser("confirm-watch",
                      help="wait for the pending switch to be confirmed, else revert "
                           "(run by mesh-release-confirm.service)")
    w.add_argument("--interval", type=float, default=1.0, help="seconds between checks")
    p = rs.add_parser("prune", help="remove all but current and the KEEP newest others")
    p.add_argument("--keep", type=int, required=True)
    p.add_argument("--protect", action="append", default=[], metavar="ID",
                   help="never remove this release (repeatable)")
    i = rs.add_parser("install", help="verify a signed release and install its agent bundle "
                                      "beside the live one (current is not switched)")
    i.add_argument("release_dir", type=Path,
                   help="the unpacked release (holding the bundle at its manifest path)")
    i.add_argument("--manifest", type=Path, help="default: RELEASE_DIR/manifest.json")
    i.add_argument("--signatures", type=Path, required=True, help="the signatures file")
    i.add_argument("--keys", type=Path, default=DEFAULT_KEYS,
                   help="trusted keys and threshold (%(default)s)")
    i.add_argument("--state-dir", type=Path,
                   help="where release-state.json lives (default: the agent's state_dir)")
    i.add_argument("--allow-downgrade", action="store_true",
                   help="accept a version older than the highest installed (a rollback)")
    i.add_argument("--allow-wire-change", action="store_true",
                   help="accept a release of another wire version than the running agent")


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    try:
        return load_config(Path(args.config)).state_dir
    except ConfigError:
        return Path("/var/lib/mesh-agent")


def wait_ready(api: HttpClient, timeout_s: float, clock: watch_mod.Clock,
               sleep: Callable[[float], None]) -> float | None:
    """Seconds until the local agent's /readyz said ready, or None after *timeout_s*."""
    start = clock.boottime()
    while True:
        try:
            status, _ = api.get("/readyz", ok=(200, 503))
            if status == 200:
                return round(clock.boottime() - start, 3)
        except (AgentUnreachable, ApiError):
            pass
        if clock.boottime() - start >= timeout_s:
            return None
        sleep(0.5)


def run(args: argparse.Namespace, out: TextIO,
        restart: Callable[[], None] = systemd_restart, *, syslog: bool = False,
        clock: watch_mod.Clock | None = None,
        start_watcher: Callable[[], None] = watch_mod.systemd_start_watcher,
        sleep: Callable[[float], None] = time.sleep) -> int:
    releases = Releases(args.root)
    clock = clock or watch_mod.Clock()
    if syslog:
        log_to_syslog()
    action = args.release_command
    try:
        if action == "list":
            rows = releases.installed()
            if args.json:
                print(json.dumps({"current": releases.current_id(),
                                  "releases": [r.as_dict() for r in rows]}, sort_keys=True),
                      file=out)
            elif not rows:
                print(f"no releases under {releases.dir}", file=out)
            else:
                print(table(["", "RELEASE", "VERSION", "WIRE", "VERIFIED", "INSTALLED"], [
                    ["*" if r.current else "", r.id, r.version or "?",
                     "?" if r.wire_version is None else r.wire_version,
                     "yes" if r.verified else "no",
                     time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.installed))]
                    for r in rows]), file=out)
            return OK
        if action == "use":
            settings = watch_mod.Settings.load(args.confirm_settings)
            if args.confirm_within is not None:
                settings = watch_mod.Settings(args.confirm_within, settings.expect_neighbors,
                                              settings.reach, settings.hold_s)
            if not args.no_confirm and (why := settings.problem()):
                raise ReleaseError(f"{why} ({args.confirm_settings} or --confirm-within)")
            restart_failed: list[str] = []

            def restart_noting() -> None:
                """A new release that dies at start must still be armed for its revert."""
                try:
                    restart()
                except subprocess.CalledProcessError as exc:
                    restart_failed.append(str(exc))

            previous, new = releases.use(
                args.id, (lambda: None) if args.no_restart else restart_noting,
                allow_wire_change=args.allow_wire_change)
            changed = previous != new
            armed = None
            if changed and not args.no_confirm:
                armed = watch_mod.arm(releases, previous, new, settings, clock, start_watcher)
            if restart_failed:
                raise ReleaseError(
                    f"current is {new}, but its agent did not start ({restart_failed[0]})"
                    + (f"; it reverts to {previous} unless confirmed within "
                       f"{armed.window_s:.0f} s" if armed else ""))
            ready_after = None
            if changed and args.wait_ready > 0 and not args.no_restart:
                ready_after = wait_ready(HttpClient(local_api_url(Path(args.config)), timeout=2.0),
                                         args.wait_ready, clock, sleep)
            if args.json:
                print(json.dumps({"previous": previous, "current": new, "changed": changed,
                                  "confirm_within": armed.window_s if armed else None,
                                  **({"ready_after_s": ready_after} if args.wait_ready > 0
                                     else {})}),
                      file=out)
            else:
                then = "not restarted (--no-restart)" if args.no_restart else "agent restarted"
                print(f"current: {new}" + (f" (was {previous or 'none'}), {then}" if changed
                                           else " (already current, nothing restarted)"),
                      file=out)
                if armed:
                    print(f"reverts to {previous} unless confirmed within "
                          f"{armed.window_s:.0f} s (meshctl release confirm-status)", file=out)
                if args.wait_ready > 0 and changed and not args.no_restart:
                    print(f"agent ready after {ready_after:.1f} s" if ready_after is not None
                          else f"agent not ready after {args.wait_ready:.0f} s", file=out)
            return OK
        if action == "confirm":
            p = watch_mod.confirm_by_hand(args.root, clock.wall())
            if args.json:
                print(json.dumps({"confirmed": p.release if p else None}), file=out)
            else:
                print(f"confirmed: {p.release}" if p else "nothing pending", file=out)
            return OK
        if action == "confirm-status":
            status = watch_mod.ConfirmFiles(args.root).status()
            if args.json:
                print(json.dumps(status, sort_keys=True), file=out)
            else:
                pend, last = status["pending"], status["last"]
                print(f"pending: {pend['release']} (reverts to {pend['previous']} after "
                      f"{pend['window_s']:.0f} s)" if pend else "pending: none", file=out)
                print("last: " + (f"{last['outcome']} {last['release']}: "
                                  f"{last.get('reason', '')}" if last else "none"), file=out)
            return OK
        if action == "confirm-watch":
            api = HttpClient(local_api_url(Path(args.config)), timeout=2.0)
            decision = watch_mod.watch(
                releases, lambda p, budget: watch_mod.observe(releases, p, api, budget_s=budget),
                restart, clock, sleep=sleep, interval_s=args.interval)
            doc = {"decision": None} if decision is None else as_dict(decision)
            print(json.dumps(doc) if args.json else
                  f"{doc['decision'] or 'nothing pending'}: {doc.get('reason', '')}", file=out)
            return OK
        if action == "prune":
            pending = watch_mod.ConfirmFiles(args.root).load_pending()
            keep_back = (pending.previous,) if pending and pending.previous else ()
            removed = releases.prune(args.keep, protect=tuple(args.protect) + keep_back)
            if args.json:
                print(json.dumps({"removed": removed}), file=out)
            else:
                print("removed: " + (", ".join(removed) or "nothing"), file=out)
            return OK
        if action == "install":
            manifest = args.manifest or args.release_dir / "manifest.json"
            trust = TrustPolicy.from_json(args.keys.read_bytes())
            sigs = parse_signatures(args.signatures.read_text())
            done = install(args.root, _state_dir(args) / STATE_FILE, manifest.read_bytes(), sigs,
                           trust, args.release_dir, allow_downgrade=args.allow_downgrade,
                           allow_wire_change=args.allow_wire_change)
            if args.json:
                print(json.dumps({"release": done.release_id, "version": done.version,
                                  "signed_by": list(done.signed_by),
                                  "ignored_keys": list(done.ignored_keys),
                                  "already": done.already}), file=out)
            else:
                print(f"{'already installed' if done.already else 'installed'}: "
                      f"{done.release_id} ({done.version}), signed by "
                      f"{', '.join(done.signed_by)}; switch with: meshctl release use "
                      f"{done.release_id}", file=out)
            return OK
    except InstallRefused as exc:
        if args.json:
            print(json.dumps({"refused": exc.reason, "message": exc.message}), file=out)
        print(f"meshctl: release refused ({exc.reason}): {exc.message}", file=sys.stderr)
        return BAD
    except (ReleaseError, ReleaseFormatError, ConfirmFormatError, ValueError, OSError,
            subprocess.CalledProcessError) as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return BAD
    return USAGE
