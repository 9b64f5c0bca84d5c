#!/usr/bin/env bash
# Build the agent release bundle for a target image: the agent and its pinned
# dependencies installed once into a venv at its final path
# (/opt/mesh-agent/releases/<id>/venv) inside a container of that image, then
# packed. Nodes only unpack it, so a 50-node rollout does not run pip 50 times,
# and air-gapped fleets need no PyPI. Keyed by the agent sources, the pins and
# the image: an unchanged agent is not rebuilt.
#   scripts/agent-bundle.sh [IMAGE]   -> build/agent/bundle.json (release id, file)
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-${MESHCORE_IMAGE:-localhost/meshcore-base:latest}}
image_id=$(podman image inspect -f '{{.Id}}' "$image")
src_hash=$( (git ls-files -co --exclude-standard files/mesh_agent | grep -v '/tests/' | sort | xargs cat; cat requirements/dev.txt) | sha256sum | cut -c1-12)
release=$(printf '%s %s' "$src_hash" "$image_id" | sha256sum | cut -c1-16)
out=build/agent/mesh-agent-$release.tgz
mkdir -p build/agent
if [ ! -f "$out" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "[agent-bundle] building wheels ($src_hash)" >&2
  .venv/bin/pip wheel -q --disable-pip-version-check -c requirements/dev.txt -w "$tmp/wheels" ./files/mesh_agent 2>&1 \
    | { grep -v "^WARNING: Location" || true; } >&2
  echo "[agent-bundle] installing into a venv inside $image (release $release)" >&2
  podman run --rm --network none -v "$tmp:/work:Z" "$image" /bin/sh -ec "
    dest=/opt/mesh-agent/releases/$release
    python3 -m venv \$dest/venv
    \$dest/venv/bin/pip install -q --no-index --find-links /work/wheels --disable-pip-version-check mesh-agent
    # The unit runs python -OO without column tables (no docstrings, no debug
    # ranges: 7 MB less RSS); nodes mount /opt read-only, so that bytecode must
    # ship in the bundle.
    \$dest/venv/bin/python -OO -X no_debug_ranges -m compileall -q -f -j 0 \$dest/venv/lib >/dev/null
    touch \$dest/venv/.meshcore-installed
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C / -czf /work/bundle.tgz \${dest#/}
  "
  mv "$tmp/bundle.tgz" "$out"
fi
printf '{"release": "%s", "bundle": "%s", "image": "%s"}\n' "$release" "$(basename "$out")" "$image" > build/agent/bundle.json
echo "$out"
