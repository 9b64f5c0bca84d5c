#!/usr/bin/env bash
# Assemble a partitioned SD-card image from a finished rootfs, with no loop
# devices and no mounts (this kernel has no vfat and no partition parsers):
# mkfs.vfat + mtools for the boot partition, mke2fs -d for the root partition,
# sfdisk for the table, dd into place. Every timestamp, UUID and volume id is
# derived from SOURCE_DATE_EPOCH and the stage key, so the output is reproducible.
#   scripts/image-assemble.sh ROOTFS OUTDIR NAME KEY
# Environment: SOURCE_DATE_EPOCH, BOOT_OFFSET_MIB, BOOT_SIZE_MIB, ROOT_SIZE_MIB,
#              BOOT_LABEL, ROOT_LABEL.
# Writes OUTDIR/NAME.img (sparse, kept for flash.yml and the boot test),
# NAME.img.xz, NAME.bmap.
set -euo pipefail
rootfs=$1 out=$2 name=$3 key=$4
: "${SOURCE_DATE_EPOCH:?}" "${BOOT_OFFSET_MIB:?}" "${BOOT_SIZE_MIB:?}" "${ROOT_SIZE_MIB:?}" "${BOOT_LABEL:?}" "${ROOT_LABEL:?}"
mkdir -p "$out"
tmp=$(mktemp -d "$out/.assemble.XXXXXX")
boot_moved=
restore() {
  # Put the boot files back into the rootfs tree if they were moved out for mke2fs.
  if [ -n "$boot_moved" ]; then
    find "$tmp/boot" -mindepth 1 -maxdepth 1 -exec mv -t "$rootfs/boot/firmware" {} +
  fi
  rm -rf "$tmp"
}
trap restore EXIT

# Stable identifiers from the stage key: a UUID for ext4 (and its htree seed),
# a volume id for FAT, a disk id for the MBR.
uuid=$(printf '%s' "$key" | sha256sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/')
volid=$(printf '%s' "$key" | sha256sum | cut -c1-8)
diskid=0x$(printf '%s' "$key" | sha256sum | cut -c9-16)

# The boot partition's contents live in the rootfs at /boot/firmware (raspi-firmware
# keeps them there); they go into the vfat, and the ext4 gets an empty mount point.
mkdir -p "$tmp/boot"
find "$rootfs/boot/firmware" -mindepth 1 -maxdepth 1 -exec mv -t "$tmp/boot" {} +
boot_moved=1

echo "[assemble] root ext4 (${ROOT_SIZE_MIB} MiB) from $rootfs" >&2
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mke2fs -q -F -t ext4 -L "$ROOT_LABEL" -U "$uuid" \
  -E "hash_seed=$uuid,lazy_itable_init=0,lazy_journal_init=0" -I 256 \
  -d "$rootfs" "$tmp/root.ext4" "${ROOT_SIZE_MIB}M"
# mke2fs -d copies each file's atime and ctime (build-time clock) and the moves
# above bump /boot/firmware's mtime: clamp them all to SOURCE_DATE_EPOCH.
python3 "$(dirname "$0")/../tools/meshcore_tools/image/ext4_clamp_times.py" "$tmp/root.ext4" "$SOURCE_DATE_EPOCH" >&2
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH e2fsck -fn "$tmp/root.ext4" >/dev/null

echo "[assemble] boot vfat (${BOOT_SIZE_MIB} MiB, label $BOOT_LABEL)" >&2
mkfs.vfat -F 32 -n "$BOOT_LABEL" -i "$volid" --invariant -C "$tmp/boot.vfat" $((BOOT_SIZE_MIB * 1024)) >/dev/null
# mcopy -m keeps the (clamped) modification times; directories are created in sorted order.
(cd "$tmp/boot" && find . -mindepth 1 -type d | LC_ALL=C sort | sed 's|^\./||' | while IFS= read -r d; do
   MTOOLS_SKIP_CHECK=1 mmd -i "$tmp/boot.vfat" "::/$d"; done)
(cd "$tmp/boot" && find . -type f | LC_ALL=C sort | sed 's|^\./||' | while IFS= read -r f; do
   MTOOLS_SKIP_CHECK=1 mcopy -m -o -i "$tmp/boot.vfat" "$f" "::/$f"; done)
fsck.vfat -n "$tmp/boot.vfat" >/dev/null

echo "[assemble] partition table and image" >&2
boot_start=$((BOOT_OFFSET_MIB * 2048))
boot_sectors=$((BOOT_SIZE_MIB * 2048))
root_start=$((boot_start + boot_sectors))
root_sectors=$((ROOT_SIZE_MIB * 2048))
img=$tmp/$name.img
truncate -s $(( (root_start + root_sectors) * 512 )) "$img"
sfdisk -q "$img" <<SFDISK
label: dos
label-id: $diskid
unit: sectors
start=$boot_start, size=$boot_sectors, type=c, bootable
start=$root_start, size=$root_sectors, type=83
SFDISK
dd if="$tmp/boot.vfat" of="$img" bs=1M seek="$BOOT_OFFSET_MIB" conv=notrunc,sparse status=none
dd if="$tmp/root.ext4" of="$img" bs=1M seek=$((BOOT_OFFSET_MIB + BOOT_SIZE_MIB)) conv=notrunc,sparse status=none
touch -d "@$SOURCE_DATE_EPOCH" "$img"

echo "[assemble] bmap and xz" >&2
bmaptool -q create -o "$tmp/$name.bmap" "$img"
xz -T2 -3 -k -c "$img" > "$tmp/$name.img.xz"
mv "$img" "$tmp/$name.bmap" "$tmp/$name.img.xz" "$out/"
