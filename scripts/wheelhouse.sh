#!/usr/bin/env bash
# Build the mesh agent and its pinned dependencies as wheels, packed in one tar
# that the mesh_agent role installs offline (lab nodes and air-gapped fleets have
# no PyPI). Keyed by the hash of the agent sources and the pins: an unchanged
# agent is not rebuilt. Prints the archive path.
set -euo pipefail
cd "$(dirname "$0")/.."
src_hash=$( (git ls-files -co --exclude-standard files/mesh_agent | grep -v '/tests/' | sort | xargs cat; cat requirements/dev.txt) | sha256sum | cut -c1-12)
out=build/wheelhouse/mesh-agent-$src_hash.tar
if [ ! -f "$out" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "[wheelhouse] building agent wheels ($src_hash)" >&2
  .venv/bin/pip wheel -q --disable-pip-version-check -c requirements/dev.txt -w "$tmp/wheels" ./files/mesh_agent >&2
  mkdir -p build/wheelhouse
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tmp" -cf "$out.tmp" wheels
  mv "$out.tmp" "$out"
fi
ln -sfn "$(basename "$out")" build/wheelhouse/mesh-agent.tar
echo "$out"
