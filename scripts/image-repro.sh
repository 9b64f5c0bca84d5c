#!/usr/bin/env bash
# Reproducibility check of the rpi-arm64 image: build it twice with the same
# SOURCE_DATE_EPOCH into two separate build directories (no shared stage cache,
# the agent bundle rebuilt too) and compare SHA256SUMS. When they differ, list
# the files of the two root trees that differ (content, mode, owner, mtime).
#   scripts/image-repro.sh            both builds from scratch (mmdebstrap twice: slow)
#   REPRO_FROM=roles scripts/image-repro.sh
#                                     reuse one rootfs stage (a copy), rebuild roles,
#                                     agent and assembly twice (checks our stages only)
#   REPRO_FROM=agent scripts/image-repro.sh
#                                     assemble the finished agent stage of the last
#                                     build again and compare with that build's image
# Exit 0 when the two builds are identical.
set -euo pipefail
cd "$(dirname "$0")/.."
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1735689600}
from=${REPRO_FROM:-scratch}
base=build/repro
rm -rf "$base"
mkdir -p "$base"
log() { printf '[image-repro] %s\n' "$*" >&2; }

build() {  # build NAME
  local dir=$base/$1 start
  mkdir -p "$dir"
  if [ "$from" = roles ]; then
    # Seed this build dir with a copy of the normal build's newest finished
    # rootfs stage (by stamp time: the key order says nothing about age).
    local rootfs
    rootfs=$(ls -td build/images/rpi-arm64/rootfs-*.done | head -1)
    mkdir -p "$dir/rpi-arm64"
    cp -a --reflink=auto "${rootfs%.done}" "$dir/rpi-arm64/"
    cp -a "$rootfs" "$dir/rpi-arm64/"
  fi
  # A fresh bundle per build: the venv is part of what must reproduce.
  rm -f build/agent/mesh-agent-*.tgz.repro-hold
  for t in build/agent/mesh-agent-*.tgz; do [ -e "$t" ] && mv "$t" "$t.repro-hold"; done
  start=$(date +%s)
  .venv/bin/ansible-playbook playbooks/image.yml -e image_target=rpi-arm64 -e "image_build_dir=$PWD/$dir" > "$dir/build.log" 2>&1
  log "$1: built in $(( $(date +%s) - start )) s"
  cp "$(ls build/agent/mesh-agent-*.tgz)" "$dir/" 2>/dev/null || true
  for t in build/agent/mesh-agent-*.tgz.repro-hold; do [ -e "$t" ] && mv -f "$t" "${t%.repro-hold}"; done
}

if [ "$from" = agent ]; then
  # The last build's outputs and stage keys, from its manifest.
  out=$(readlink -f build/images/rpi-arm64/latest)
  name=$(jq -r .name "$out/manifest.json")
  key=$(jq -r .stage_keys.assembly "$out/manifest.json")
  agent=build/images/rpi-arm64/agent-$(jq -r .stage_keys.agent "$out/manifest.json")
  eval "$(jq -r '.layout | "BOOT_OFFSET_MIB=\(.boot_offset_mib) BOOT_SIZE_MIB=\(.boot_size_mib) ROOT_SIZE_MIB=\(.root_size_mib) BOOT_LABEL=\(.boot_label) ROOT_LABEL=\(.root_label)"' "$out/manifest.json")"
  export BOOT_OFFSET_MIB BOOT_SIZE_MIB ROOT_SIZE_MIB BOOT_LABEL ROOT_LABEL
  SOURCE_DATE_EPOCH=$(jq -r .source_date_epoch "$out/manifest.json")
  start=$(date +%s)
  scripts/image-assemble.sh "$PWD/$agent" "$PWD/$base/a" "$name" "$key"
  log "re-assembled in $(( $(date +%s) - start )) s"
  for f in "$name.img" "$name.bmap" "$name.img.xz"; do
    a=$(sha256sum < "$base/a/$f" | cut -c1-64); b=$(grep " $f\$" "$out/SHA256SUMS" | cut -c1-64)
    if [ "$a" = "$b" ]; then log "identical: $f $a"; else log "DIFFERENT: $f build $b, again $a"; rc=1; fi
  done
  exit "${rc:-0}"
fi

build a
build b
sums_a=$base/a/rpi-arm64/latest/SHA256SUMS
sums_b=$base/b/rpi-arm64/latest/SHA256SUMS
log "build a:"; cat "$sums_a" >&2
log "build b:"; cat "$sums_b" >&2
if cmp -s "$sums_a" "$sums_b"; then
  log "REPRODUCIBLE: identical SHA256SUMS ($(grep '\.img\.xz$' "$sums_a" | cut -c1-64))"
  exit 0
fi
log "NOT reproducible; differing files of the root trees (content / metadata):"
for x in a b; do
  root=$(ls -d "$base/$x"/rpi-arm64/agent-* | grep -v '\.done$' | head -1)
  (cd "$root" && find . -printf '%p %M %u:%g %T@ %s\n' | LC_ALL=C sort > "$OLDPWD/$base/$x.meta"
   find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum > "$OLDPWD/$base/$x.sums")
done
diff "$base/a.sums" "$base/b.sums" | grep '^[<>]' | awk '{print $3}' | sort -u | sed 's/^/  content: /' >&2 || true
diff "$base/a.meta" "$base/b.meta" | grep '^[<>]' | awk '{print $2}' | sort -u | head -50 | sed 's/^/  metadata: /' >&2 || true
exit 1
