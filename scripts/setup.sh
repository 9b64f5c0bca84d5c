#!/usr/bin/env bash
# Prepare this machine for mesh-core: Debian packages, podman configuration, the
# repo-local venv. Every step is skipped when its inputs (hashed) have not changed,
# so a second run takes about a second. Safe to run again at any time.
#   scripts/setup.sh           everything (root: apt, podman, sysctl, binfmt)
#   scripts/setup.sh --venv    only the venv, as any user (make venv: what make seed
#                              needs on an operator's laptop, nothing else installed)
set -euo pipefail
venv_only=false
[ "${1:-}" = --venv ] && venv_only=true
cd "$(dirname "$0")/.."
ROOT=$PWD
STAMPS=$ROOT/.cache/stamps
mkdir -p "$STAMPS"
PYTHON=${PYTHON:-python3}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
# stamp NAME HASH: true when the step already ran with these inputs
stamped() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp() { echo "$2" > "$STAMPS/$1"; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "setup: this step needs root (podman with systemd containers, veth links, apt)." >&2
    exit 1
  fi
}

if ! $venv_only; then
# 1. Debian packages -----------------------------------------------------------
h=$(hash_of requirements/apt.txt)
if ! stamped apt "$h"; then
  need_root
  mapfile -t pkgs < <(grep -vE '^\s*(#|$)' requirements/apt.txt)
  missing=()
  for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  stamp apt "$h"
else
  log "Debian packages: cached"
fi

# 2. podman: runc instead of crun and ulimits below conmon's (MACHINE-NOTES 3a) --
# The same file pins the network backend to netavark (why: scripts/containers.conf).
conf=/etc/containers/containers.conf
want=$(cat scripts/containers.conf)
backend() { podman info --format '{{.Host.NetworkBackend}}' 2>/dev/null || echo unknown; }
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
  need_root
  if [ "$(backend)" = cni ]; then
    # Containers made under CNI cannot be started or torn down by netavark. Ours
    # (the lab, labelled; molecule instances, mc-*) are rebuilt by the next run
    # anyway, so they go; anyone else's stop the switch before anything changes.
    foreign=$(podman ps -a --format '{{.Names}} {{.Labels}}' \
      | awk '$0 !~ /io.meshcore.lab:1/ && $1 !~ /^mc-/ {print $1}')
    if [ -n "$foreign" ]; then
      echo "setup: podman here uses the CNI network backend and has containers that are" >&2
      echo "  not mesh-core's: $(echo $foreign)." >&2
      echo "  mesh-core pins the netavark backend (scripts/containers.conf explains why), and" >&2
      echo "  containers made under CNI cannot be started by netavark. Remove or recreate" >&2
      echo "  them (podman rm -f NAME), then run make setup again. Nothing was changed." >&2
      exit 1
    fi
    ours=$(podman ps -aq)
    if [ -n "$ours" ]; then
      log "switching podman from CNI to netavark: removing the lab's and molecule's old containers"
      podman rm -f -t 2 $ours >/dev/null
    fi
    for net in $(podman network ls --format '{{.Name}}' | grep '^meshcore-' || true); do
      podman network rm -f "$net" >/dev/null
    done
  fi
  log "writing $conf (runtime runc, default ulimits, netavark network backend)"
  mkdir -p /etc/containers
  [ -f "$conf" ] && cp -n "$conf" "$conf.meshcore-orig" || true
  printf '%s\n' "$want" > "$conf"
fi
if [ "$(backend)" != netavark ]; then
  echo "setup: podman reports network backend '$(backend)', expected netavark" >&2
  echo "  (pinned in $conf; is the netavark package installed?)" >&2
  exit 1
fi

# 2b. inotify limits: every systemd container (rootful, all uid 0) takes inotify
# instances from one per-user pool of 128; a 50-node lab exhausts it and systemd
# stalls at boot ("Failed to create inotify object: Too many open files").
sysctl_file=/etc/sysctl.d/60-meshcore-lab.conf
want_sysctl=$'fs.inotify.max_user_instances = 8192\nfs.inotify.max_user_watches = 524288'
if [ "$(cat "$sysctl_file" 2>/dev/null)" != "$want_sysctl" ] \
   || [ "$(cat /proc/sys/fs/inotify/max_user_instances)" -lt 8192 ]; then
  need_root
  log "raising inotify limits for systemd containers ($sysctl_file)"
  printf '%s\n' "$want_sysctl" > "$sysctl_file"
  sysctl -q -p "$sysctl_file"
fi

# 2c. qemu-user binfmt for foreign-arch image builds (MACHINE-NOTES 4): the arm64
# rootfs runs its maintainer scripts through qemu-aarch64-static; flag F lets the
# interpreter work inside a chroot.
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  need_root
  log "registering qemu-aarch64 with binfmt_misc"
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable qemu-aarch64
fi

fi  # not --venv

# 3. venv with pinned dependencies, plus the agent and the repo's own tools and
# test kit (pyproject.toml), both editable: imports resolve to this checkout.
h=$(hash_of requirements/dev.txt files/mesh_agent/pyproject.toml pyproject.toml)
if ! stamped venv "$h" || [ ! -x .venv/bin/python ]; then
  log "creating .venv from requirements/dev.txt"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements/dev.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e files/mesh_agent -e .
  # The agent runs with -OO -X no_debug_ranges (as its systemd unit does); pip
  # only wrote plain bytecode.
  .venv/bin/python -OO -X no_debug_ranges -m compileall -q -f -j 0 .venv/lib >/dev/null
  stamp venv "$h"
else
  log "venv: cached"
fi
log "ready"
