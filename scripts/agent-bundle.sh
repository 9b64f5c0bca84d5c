#!/usr/bin/env bash
# Build the agent release bundle for a target image: the agent and its pinned
# dependencies installed once into a venv at its final path
# (/opt/mesh-agent/releases/<id>/venv) inside the target, then packed. Nodes only
# unpack it, so a 50-node rollout does not run pip 50 times, and air-gapped
# fleets need no PyPI. Keyed by the agent sources, the pins and the target: an
# unchanged agent is not rebuilt.
#   scripts/agent-bundle.sh [IMAGE]
#       inside a container of a podman image (default localhost/meshcore-base:latest)
#       -> build/agent/bundle.json
#   scripts/agent-bundle.sh --chroot ROOTFS --id TARGET_ID --manifest PATH
#       inside a rootfs through chroot (a foreign arch runs through qemu-user
#       binfmt); wheels for its platform come from PyPI (binary only). TARGET_ID
#       names the rootfs (the image stage hash).
set -euo pipefail
cd "$(dirname "$0")/.."
image=${MESHCORE_IMAGE:-localhost/meshcore-base:latest}
rootfs=
target_id=
manifest=build/agent/bundle.json
while [ $# -gt 0 ]; do
  case "$1" in
    --chroot) rootfs=$2; shift 2 ;;
    --id) target_id=$2; shift 2 ;;
    --manifest) manifest=$2; shift 2 ;;
    -*) echo "agent-bundle: unknown option $1" >&2; exit 2 ;;
    *) image=$1; shift ;;
  esac
done
if [ -n "$rootfs" ]; then
  [ -n "$target_id" ] || { echo "agent-bundle: --chroot needs --id" >&2; exit 2; }
  target="chroot:$rootfs"
  # The machine the venv runs on (uname -m of the target): the mesh_agent role
  # refuses a bundle built for another one.
  machine=$(chroot "$rootfs" /usr/bin/python3 -c 'import platform; print(platform.machine())')
else
  target_id=$(podman image inspect -f '{{.Id}}' "$image")
  target=$image
  machine=$(podman image inspect -f '{{.Architecture}}' "$image" | sed 's/^amd64$/x86_64/; s/^arm64$/aarch64/')
fi
src_hash=$( (git ls-files -co --exclude-standard files/mesh_agent | grep -v '/tests/' | sort | xargs cat; cat requirements/dev.txt) | sha256sum | cut -c1-12)
release=$(printf '%s %s' "$src_hash" "$target_id" | sha256sum | cut -c1-16)
out=build/agent/mesh-agent-$release.tgz
mkdir -p build/agent "$(dirname "$manifest")"

# The same script runs in either target: a venv at the final path, offline
# install from the wheel directory mounted at $1, packed reproducibly
# (SOURCE_DATE_EPOCH makes pip write hash-checked .pyc files, not timestamped ones).
install_script='
  set -e
  work=$1; release=$2
  dest=/opt/mesh-agent/releases/$release
  python3 -m venv "$dest/venv"
  "$dest/venv/bin/pip" install -q --no-index --find-links "$work/wheels" --disable-pip-version-check mesh-agent
  # The unit runs python -OO without column tables (no docstrings, no debug
  # ranges: 7 MB less RSS); nodes mount /opt read-only, so that bytecode must
  # ship in the bundle.
  "$dest/venv/bin/python" -OO -X no_debug_ranges -m compileall -q -f -j 0 "$dest/venv/lib" >/dev/null
  touch -d "@${SOURCE_DATE_EPOCH:-0}" "$dest/venv/.meshcore-installed"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C / -czf "$work/bundle.tgz" "${dest#/}"
'

if [ ! -f "$out" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if [ -z "$rootfs" ]; then
    echo "[agent-bundle] building wheels ($src_hash)" >&2
    .venv/bin/pip wheel -q --disable-pip-version-check -c requirements/dev.txt -w "$tmp/wheels" ./files/mesh_agent 2>&1 \
      | { grep -v "^WARNING: Location" || true; } >&2
    echo "[agent-bundle] installing into a venv inside $image (release $release)" >&2
    podman run --rm --network none -e SOURCE_DATE_EPOCH -v "$tmp:/work:Z" "$image" \
      /bin/sh -ec "$install_script" sh /work "$release"
    mv "$tmp/bundle.tgz" "$out"
  else
    # The target's interpreter decides the wheels: its version and machine.
    read -r pyver machine < <(chroot "$rootfs" /usr/bin/python3 -c \
      'import platform, sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine())')
    echo "[agent-bundle] wheels for CPython $pyver $machine ($src_hash)" >&2
    .venv/bin/pip wheel -q --disable-pip-version-check --no-deps -w "$tmp/wheels" ./files/mesh_agent 2>&1 \
      | { grep -v "^WARNING: Location" || true; } >&2
    .venv/bin/pip download -q --disable-pip-version-check --only-binary=:all: \
      --platform "manylinux_2_17_$machine" --platform "manylinux2014_$machine" --platform "manylinux_2_28_$machine" \
      --python-version "$pyver" --implementation cp \
      -c requirements/dev.txt -d "$tmp/wheels" "$tmp"/wheels/mesh_agent-*.whl 2>&1 \
      | { grep -v "^WARNING: Location" || true; } >&2
    work=/tmp/mesh-agent-bundle.$$
    mkdir -p "$rootfs$work"
    cp -a "$tmp/wheels" "$rootfs$work/"
    trap 'rm -rf "$tmp" "${rootfs:?}$work" "${rootfs:?}/opt/mesh-agent/releases/$release"' EXIT
    echo "[agent-bundle] installing into a venv inside $rootfs (release $release)" >&2
    # chroot, not a container: the rootfs is foreign (qemu-user) and has no init to run.
    chroot "$rootfs" /bin/sh -ec "$install_script" sh "$work" "$release"
    mv "$rootfs$work/bundle.tgz" "$out"
    # The bundle is installed by the mesh_agent role like on any node, so the build
    # leaves nothing behind in the rootfs; an empty releases/ tree is removed too.
    rm -rf "${rootfs:?}/opt/mesh-agent/releases/$release"
    rmdir "$rootfs/opt/mesh-agent/releases" "$rootfs/opt/mesh-agent" 2>/dev/null || true
  fi
fi
# The mesh_agent role reads the bundle from the manifest's directory.
mdir=$(dirname "$manifest")
if [ "$(realpath "$mdir")" != "$(realpath build/agent)" ]; then
  ln -f "$out" "$mdir/" 2>/dev/null || cp "$out" "$mdir/"
fi
printf '{"release": "%s", "bundle": "%s", "image": "%s", "machine": "%s"}\n' \
  "$release" "$(basename "$out")" "$target" "$machine" > "$manifest"
echo "$out"
