#!/usr/bin/env bash
# Splits the media tar into parts for a one-way transfer (a data diode, a file-transfer
# gateway with a size limit per file). Runs on the staging host (GNU coreutils).
#
#   media-split.sh <bundle_root>/<version>.tar PART_BYTES REASSEMBLE_SH
#
# Writes <bundle_root>/<version>.parts/ holding
#   <version>.tar.000, .001, ...  the tar in order, each at most PART_BYTES bytes
#   PARTS.SHA256SUMS             one `sha256sum -c` line per part
#   <version>.tar.sha256         the whole tar's line, copied from beside the tar
#   reassemble.sh                the one command to run inside the gap
# in one read of the tar, which must match <version>.tar.sha256 (written with it). The
# directory is built under a hidden temporary name and renamed into place when complete,
# so an interrupted run never leaves a parts directory that looks whole; a parts directory
# that no longer fits the tar is removed before the new one is written.
# Nothing is written when the parts directory already fits the tar (the same whole-tar
# checksum, part size, part files and reassemble.sh).
# Last line of output: "unchanged: ..." or "written: ..." (what the seal's changed_when reads).
set -euo pipefail
export LC_ALL=C

die() {
  printf 'media-split.sh: %s\n' "$@" >&2
  exit 1
}

[ $# -eq 3 ] || die "usage: media-split.sh <bundle_root>/<version>.tar PART_BYTES REASSEMBLE_SH"
tar_path=$1 part_bytes=$2 reassemble=$3
[[ $part_bytes =~ ^[1-9][0-9]{0,17}$ ]] || die "PART_BYTES must be a positive number of bytes, not '$part_bytes'"
[ -f "$reassemble" ] || die "$reassemble (reassemble.sh) does not exist"
dir=$(dirname -- "$tar_path")
name=$(basename -- "$tar_path")
version=${name%.tar}
[[ $name == *.tar && $version =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] \
  || die "$tar_path is not <bundle_root>/<version>.tar"
[[ -f $tar_path && -f $tar_path.sha256 ]] \
  || die "$tar_path or its .sha256 does not exist: run prepare with bundle_media_tar"
read -r want listed_name _ < "$tar_path.sha256" || :
[[ $want =~ ^[0-9a-f]{64}$ && ${listed_name#\*} == "$name" ]] \
  || die "$tar_path.sha256 is not one line '<sha256>  $name': delete $tar_path and run prepare again"

parts=$dir/$version.parts
size=$(stat -c %s -- "$tar_path")
[ "$size" -gt 0 ] || die "$tar_path is empty: delete it and run prepare again"
count=$(((size + part_bytes - 1) / part_bytes))
# Suffixes of one width (000, 001, ...; more digits past 1000 parts) sort in their order.
width=3
while [ $((count - 1)) -ge $((10 ** width)) ]; do width=$((width + 1)); done
summary="$count parts of at most $part_bytes bytes in $parts"

# parts_fit DIR: DIR/PARTS.SHA256SUMS names this tar's parts in order, and DIR holds each at
# its size and no other part file. Names and sizes only: no part is read.
parts_fit() {
  local where=$1 index=0 sum file expected left=$size length
  [ -f "$where/PARTS.SHA256SUMS" ] || return 1
  while read -r sum file; do
    printf -v expected '%s.%0*d' "$name" "$width" "$index"
    [[ $sum =~ ^[0-9a-f]{64}$ && $file == "$expected" && -f $where/$file ]] || return 1
    length=$(stat -c %s -- "$where/$file")
    if [ "$left" -gt "$part_bytes" ]; then
      [ "$length" -eq "$part_bytes" ] || return 1
    else
      [ "$length" -eq "$left" ] || return 1
    fi
    left=$((left - length)) index=$((index + 1))
  done < "$where/PARTS.SHA256SUMS"
  [ "$index" -eq "$count" ] && [ "$left" -eq 0 ] || return 1
  local files=("$where/$name".[0-9]*)
  [ "${#files[@]}" -eq "$count" ]
}

# Does the parts directory already fit this tar (its checksum, the part size, reassemble.sh)?
fits() {
  cmp -s -- "$parts/$name.sha256" "$tar_path.sha256" \
    && cmp -s -- "$parts/reassemble.sh" "$reassemble" \
    && parts_fit "$parts"
}

if fits; then
  printf 'unchanged: %s\n' "$summary"
  exit 0
fi

# From here the old parts directory (if any) no longer fits the tar: it goes first, so that
# no stale parts directory is left should this run be interrupted.
shopt -s nullglob
for stale in "$dir/.$version.parts."*; do rm -rf -- "$stale"; done
if [ -e "$parts" ]; then
  mv -- "$parts" "$dir/.$version.parts.old"
  rm -rf -- "$dir/.$version.parts.old"
fi
shopt -u nullglob

free=$(df --output=avail -B1 -- "$dir" | tail -n 1 | tr -d ' ')
if [[ $free =~ ^[0-9]+$ ]] && [ "$free" -lt "$size" ]; then
  die "not enough space in $dir for the parts: they need $size bytes, $free are free." \
    "Free space there (or set bundle_root to a larger disk) and run prepare again."
fi

tmp=$(mktemp -d -- "$dir/.$version.parts.XXXXXX")
whole_pid=''
trap 'rm -rf -- "$tmp"; [ -z "$whole_pid" ] || kill "$whole_pid" 2>/dev/null || :' EXIT
mkfifo -- "$tmp/.whole"
# One read of the tar: tee feeds the whole-tar checksum through the fifo and split, which
# writes each part and prints its checksum line as it goes.
sha256sum < "$tmp/.whole" > "$tmp/.whole.sum" &
whole_pid=$!
# shellcheck disable=SC2016 # $FILE is split's, expanded by the filter's own shell
tee -- "$tmp/.whole" < "$tar_path" \
  | (cd -- "$tmp" && SHELL=/bin/sh split -b "$part_bytes" -a "$width" -d \
      --filter='tee -- "$FILE" | sha256sum | { read -r sum _ && printf "%s  %s\n" "$sum" "$FILE"; }' \
      - "$name.") > "$tmp/.sums"
wait "$whole_pid"
whole_pid=''
read -r got _ < "$tmp/.whole.sum"
[ "$got" = "$want" ] \
  || die "$tar_path does not match its .sha256 ($got, not $want): the tar changed on disk." \
    "Delete $tar_path and run prepare again."
sort -k 2 -- "$tmp/.sums" > "$tmp/PARTS.SHA256SUMS"
# A part its tee could not write whole (a full disk) still has the whole part's checksum.
parts_fit "$tmp" || die "the parts written in $tmp do not add up to $tar_path (disk full?)." \
  "Free space in $dir and run prepare again."
rm -f -- "$tmp/.whole" "$tmp/.whole.sum" "$tmp/.sums"
cp -- "$tar_path.sha256" "$tmp/$name.sha256"
cp -- "$reassemble" "$tmp/reassemble.sh"
chmod 0755 -- "$tmp" "$tmp/reassemble.sh"
chmod 0644 -- "$tmp/PARTS.SHA256SUMS" "$tmp/$name.sha256"
# On disk before the name says complete.
sync -- "$tmp"/* "$tmp"
mv -- "$tmp" "$parts"
trap - EXIT
printf 'written: %s\n' "$summary"
