#!/usr/bin/env bash
# Content hash of the given files and directories (tracked and untracked, not
# ignored): the cache key of an image stage. Names and contents both count.
#   scripts/tree-hash.sh PATH...   -> 16 hex digits
set -euo pipefail
cd "$(dirname "$0")/.."
git ls-files -co --exclude-standard -- "$@" | LC_ALL=C sort | while IFS= read -r f; do
  [ -f "$f" ] || continue
  printf '%s %s\n' "$(sha256sum < "$f" | cut -c1-64)" "$f"
done | sha256sum | cut -c1-16
