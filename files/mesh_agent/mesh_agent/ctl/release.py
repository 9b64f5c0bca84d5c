"""``meshctl release list|use|prune|install``: the node's installed agent releases.

These work on the node's files (``--root``, default ``/opt/mesh-agent``), not on the
agent's API. ``use`` switches ``current`` atomically and restarts the unit through
the ``restart`` callable :func:`run` is given (``systemctl restart mesh-agent``
from the command line; tests pass their own).
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
from mesh_agent.ctl.render import table
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
    subprocess.run(["systemctl", "restart", UNIT], check=True)


def add_parser(sub: Any) -> None:
    r = sub.add_parser("release", help="installed agent releases: list, use, prune, install",
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


def run(args: argparse.Namespace, out: TextIO,
        restart: Callable[[], None] = systemd_restart, *, syslog: bool = False) -> int:
    releases = Releases(args.root)
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
            previous, new = releases.use(
                args.id, (lambda: None) if args.no_restart else restart,
                allow_wire_change=args.allow_wire_change)
            changed = previous != new
            if args.json:
                print(json.dumps({"previous": previous, "current": new, "changed": changed}),
                      file=out)
            else:
                then = "not restarted (--no-restart)" if args.no_restart else "agent restarted"
                print(f"current: {new}" + (f" (was {previous or 'none'}), {then}" if changed
                                           else " (already current, nothing restarted)"),
                      file=out)
            return OK
        if action == "prune":
            removed = releases.prune(args.keep, protect=tuple(args.protect))
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
    except (ReleaseError, ReleaseFormatError, OSError, subprocess.CalledProcessError) as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return BAD
    return USAGE
