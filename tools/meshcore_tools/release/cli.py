"""meshcore-release: build, sign and verify mesh-core releases (offline).

  meshcore-release build [--out build/release] [--require-bundles]
  meshcore-release keygen --name alice --private alice.ed25519.pem [--keys trusted.json]
  meshcore-release sign --key alice.ed25519.pem build/release/mesh-core-v0.1.0.manifest.json
  meshcore-release verify --keys trusted.json build/release/mesh-core-v0.1.0.tgz
  meshcore-release trust --keys trusted.json (--remove NAME | --threshold K)

A key's passphrase, when it has one, comes from the file --passphrase-file names.
Exit codes: 0 done or verified, 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

from mesh_agent.release.verify import (
    Accept,
    ReleaseFormatError,
    TrustPolicy,
    key_id,
    parse_signatures,
)

from meshcore_tools.release import sign as signing
from meshcore_tools.release.build import BuildError, build


def _passphrase(path: Path | None) -> bytes | None:
    return path.read_bytes().rstrip(b"\n") if path else None


def sigs_path_for(manifest: Path) -> Path:
    return manifest.with_name(manifest.name + ".sigs")


def cmd_build(args: argparse.Namespace) -> int:
    start = time.monotonic()
    try:
        b = build(args.root, args.out, require_bundles=args.require_bundles, serial=args.serial)
    except BuildError as exc:
        print(f"meshcore-release: {exc}", file=sys.stderr)
        return 1
    wall = time.monotonic() - start
    for note in b.notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps({"tarball": str(b.tarball), "sha256": b.sha256, "bytes": b.size,
                      "version": b.manifest["version"], "serial": b.manifest["serial"],
                      "wall_seconds": round(wall, 2)}))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    public = signing.keygen(args.private, _passphrase(args.passphrase_file))
    entry = {"name": args.name, "id": key_id(public),
             "public_key": base64.b64encode(public).decode()}
    if args.keys:
        signing.add_trusted(args.keys, args.name, public, args.threshold)
    print(json.dumps(entry))
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    if args.remove:
        policy = signing.remove_trusted(args.keys, args.remove)
    else:
        policy = TrustPolicy.from_json(args.keys.read_text())
    if args.threshold is not None:
        doc = json.loads(policy.to_json())
        doc["threshold"] = args.threshold
        policy = TrustPolicy.from_json(json.dumps(doc))
        args.keys.write_text(policy.to_json())
    print(f"{args.keys}: {policy.threshold} of {len(policy.keys)} "
          f"({', '.join(sorted(k.name for k in policy.keys.values()))})")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    key = signing.load_private(args.key, _passphrase(args.passphrase_file))
    sig = signing.sign(args.manifest.read_bytes(), key)
    out = args.signatures or sigs_path_for(args.manifest)
    signing.append_signature(out, sig)
    print(f"signed {args.manifest.name} with key {sig.key_id} -> {out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    trust = TrustPolicy.from_json(args.keys.read_text())
    detached = args.tarball.with_name(args.tarball.name.removesuffix(".tgz") + ".manifest.json")
    sigs_file = args.signatures or sigs_path_for(detached)
    sigs = parse_signatures(sigs_file.read_text()) if sigs_file.exists() else []
    manifest = detached.read_bytes() if detached.exists() else None
    verdict = signing.verify_release(args.tarball, sigs, trust, manifest)
    if isinstance(verdict, Accept):
        print(f"ok: {args.tarball.name} {verdict.manifest.version_text} "
              f"(serial {verdict.manifest.serial}, wire {verdict.manifest.wire_version}), "
              f"signed by {', '.join(verdict.signed_by)} ({len(verdict.signed_by)} of "
              f"{trust.threshold} needed)"
              + (f"; ignored unknown keys {', '.join(verdict.ignored_keys)}"
                 if verdict.ignored_keys else ""))
        return 0
    why = verdict if isinstance(verdict, str) else f"{verdict.reason}: {verdict.message}"
    print(f"refused: {why}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshcore-release", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the reproducible release tarball")
    b.add_argument("--root", type=Path, default=Path("."), help="the checkout (%(default)s)")
    b.add_argument("--out", type=Path, default=Path("build/release"))
    b.add_argument("--require-bundles", action="store_true",
                   help="fail unless both agent bundles (x86_64, aarch64) are built")
    b.add_argument("--serial", type=int,
                   help="the manifest's serial (default: SOURCE_DATE_EPOCH, else commit time)")
    k = sub.add_parser("keygen", help="a new Ed25519 signing key (private PEM, mode 0600)")
    k.add_argument("--name", required=True, help="the maintainer's name in the keys file")
    k.add_argument("--private", type=Path, required=True, help="where to write the private key")
    k.add_argument("--keys", type=Path, help="add the public key to this trusted-keys file")
    k.add_argument("--threshold", type=int, help="set the keys file's threshold k")
    k.add_argument("--passphrase-file", type=Path, help="encrypt the private key")
    t = sub.add_parser("trust", help="show or change a trusted-keys file")
    t.add_argument("--keys", type=Path, required=True)
    t.add_argument("--remove", metavar="NAME", help="remove this maintainer's key")
    t.add_argument("--threshold", type=int, help="set the threshold k")
    s = sub.add_parser("sign", help="add this key's signature over a manifest")
    s.add_argument("--key", type=Path, required=True)
    s.add_argument("--passphrase-file", type=Path)
    s.add_argument("--signatures", type=Path, help="default: MANIFEST.sigs")
    s.add_argument("manifest", type=Path)
    v = sub.add_parser("verify", help="check signatures, manifest and every file of a tarball")
    v.add_argument("--keys", type=Path, required=True)
    v.add_argument("--signatures", type=Path,
                   help="default: <tarball without .tgz>.manifest.json.sigs")
    v.add_argument("tarball", type=Path)
    return p


COMMANDS = {"build": cmd_build, "keygen": cmd_keygen, "trust": cmd_trust, "sign": cmd_sign,
            "verify": cmd_verify}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (OSError, ReleaseFormatError, signing.SignError, ValueError) as exc:
        print(f"meshcore-release: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
