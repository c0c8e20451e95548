#!/bin/sh
# Puts a gemma-airgap bundle's media tar back together inside the closed network.
#
#   sh reassemble.sh [output-dir]        (default output-dir: the current directory)
#
# Run it where the parts arrived (through the data diode or file-transfer gateway), with
# everything prepare.yml wrote into <version>.parts/ beside it: <version>.tar.000, .001, ...,
# PARTS.SHA256SUMS (one line per part), <version>.tar.sha256 (the whole tar) and this script.
# It needs sh and coreutils only (sha256sum, cat, mv, df, stat).
#
# 1. Every part PARTS.SHA256SUMS lists must be here and match its sha256: a missing or damaged
#    part is named, and nothing is written.
# 2. The parts are joined in order into <output-dir>/<version>.tar.partial, which is checked
#    against <version>.tar.sha256 and only then renamed to <version>.tar: a file named
#    <version>.tar is always whole. Files not listed in PARTS.SHA256SUMS are never joined.
# 3. It prints the command that unpacks the tar and checks the bundle.
# Running it again after success only checks <version>.tar again. Exit status: 0 done,
# 1 a part is missing or damaged (or the joined tar does not check), 2 anything else.
set -eu
LC_ALL=C
export LC_ALL

cr=$(printf '\r')  # a gateway that copies text files may have added CRs
# say LINE...: each argument on a line of its own.
say() { printf '%s\n' "$@"; }
# fail STATUS LINE...: each line to stderr, then exit.
fail() {
  status=$1
  shift
  for line in "$@"; do printf 'reassemble.sh: %s\n' "$line" >&2; done
  exit "$status"
}
# A path as the shell reads it back: quoted when it holds anything unusual.
quote() {
  case $1 in
    *[!A-Za-z0-9_./:=+@%-]*) printf "'%s'" "$1" ;;
    *) printf '%s' "$1" ;;
  esac
}
# sha256 of a file, or "unreadable".
sha256_of() {
  if sum=$(sha256sum < "$1" 2>/dev/null); then printf '%s' "${sum%% *}"; else printf unreadable; fi
}
is_sha256() {
  case $1 in *[!0-9a-f]*) return 1 ;; esac
  [ ${#1} -eq 64 ]
}

case ${1:-} in
  -h | --help)
    say "usage: sh reassemble.sh [output-dir]" \
      "(checks every part, joins them into <output-dir>/<version>.tar, checks it)"
    exit 0
    ;;
esac
[ $# -le 1 ] || fail 2 "usage: sh reassemble.sh [output-dir]"

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd -P) \
  || fail 2 "cannot find the directory of $0; run it as: sh /path/to/<version>.parts/reassemble.sh"
out=${1:-.}
mkdir -p -- "$out" 2>/dev/null || fail 2 "cannot create the output directory $out"
out=$(CDPATH='' cd -- "$out" && pwd -P) || fail 2 "cannot enter the output directory ${1:-.}"
[ -w "$out" ] || fail 2 "cannot write in $out: give a writable directory with enough space," \
  "e.g. sh $(quote "$here/reassemble.sh") /srv/bundles"

# --- the whole tar's checksum: <version>.tar.sha256 (one line, sha256sum format) ---
sumfile=''
for file in "$here"/*.tar.sha256; do
  [ -f "$file" ] || continue
  [ -z "$sumfile" ] || fail 2 "more than one *.tar.sha256 in $here: keep one bundle's parts" \
    "per directory (copy each <version>.parts/ directory on its own)"
  sumfile=$file
done
[ -n "$sumfile" ] || fail 2 "no <version>.tar.sha256 in $here: copy the whole <version>.parts/" \
  "directory from the media (the parts, PARTS.SHA256SUMS, <version>.tar.sha256, reassemble.sh)"
read -r want tarname rest < "$sumfile" || :
tarname=${tarname%"$cr"}
tarname=${tarname#\*}
version=${tarname%.tar}
case $version in '' | [!A-Za-z0-9]* | *[!A-Za-z0-9._-]*) version='' ;; esac
if ! is_sha256 "$want" || [ -n "$rest" ] || [ "$tarname" != "$version.tar" ] \
  || [ "${sumfile##*/}" != "$tarname.sha256" ]; then
  fail 2 "$sumfile is not one line '<sha256>  <version>.tar': copy it again from the media"
fi
tar=$out/$version.tar
partial=$tar.partial

next() {
  say "" "Next, unpack the bundle and check it (unpacking needs as much space again):" \
    "  cd $(quote "$out") && tar -xf $(quote "$version.tar") && cd $(quote "$version") && sha256sum -c SHA256SUMS" \
    "then install the kit and deploy it from the control node (README: the production flow):" \
    "  sudo sh $(quote "$out/$version/control-node/install.sh")" \
    "  ansible-playbook -i <inventory> gemma_airgap.ollama.deploy -e release_source=$(quote "$out/$version")"
}

# --- already done? (a re-run after success changes nothing) ---
# Only a regular file may stand where the tar goes (mv would move the result into a
# directory, or through a link, and still look done).
for existing in "$tar" "$partial" "$tar.sha256" "$tar.sha256.partial"; do
  if [ -L "$existing" ] || { [ -e "$existing" ] && [ ! -f "$existing" ]; }; then
    fail 2 "$existing exists and is not a regular file: move it away and run this again."
  fi
done
if [ -f "$tar" ]; then
  say "Checking the existing $tar against $tarname.sha256 ..."
  if [ "$(sha256_of "$tar")" = "$want" ]; then
    say "OK: $tar is whole (sha256 $want); nothing to do."
    next
    exit 0
  fi
  say "It does not match: it is replaced once the parts are joined and checked."
fi

# --- the parts list: PARTS.SHA256SUMS, '<sha256>  <version>.tar.<n>', n = 0, 1, 2, ... ---
list=$here/PARTS.SHA256SUMS
[ -f "$list" ] || fail 2 "no PARTS.SHA256SUMS in $here: copy it again from the media" \
  "(from the same <version>.parts/ directory as the parts)"
count=0 listed=' ' missing='' need=0
while read -r sum name rest || [ -n "${sum:-}" ]; do
  [ -n "$sum" ] || continue
  name=${name%"$cr"}
  name=${name#\*}
  suffix=${name#"$version.tar."}
  number=${suffix#"${suffix%%[!0]*}"}
  case $suffix in '' | *[!0-9]*) number=x ;; esac
  if ! is_sha256 "$sum" || [ -n "$rest" ] || [ "$name" = "$suffix" ] \
    || [ "${number:-0}" != "$count" ]; then
    fail 2 "PARTS.SHA256SUMS line $((count + 1)) is not '<sha256>  $version.tar.<$count>':" \
      "copy PARTS.SHA256SUMS again from the media"
  fi
  count=$((count + 1))
  listed="$listed$name "
  if [ -f "$here/$name" ]; then
    need=$((need + $(stat -c %s -- "$here/$name")))
  else
    missing="$missing $name"
  fi
done < "$list"
[ "$count" -gt 0 ] || fail 2 "PARTS.SHA256SUMS lists no part: copy it again from the media"

# Files that look like parts but are not listed are never joined.
for file in "$here/$version.tar."*; do
  name=${file##*/}
  case $name in "$version.tar.sha256" | "$version.tar.partial") continue ;; esac
  [ -e "$file" ] || continue
  case $listed in *" $name "*) ;; *) say "Ignoring $name: PARTS.SHA256SUMS does not list it." ;; esac
done

# --- free space (when every part is here: the tar is exactly their sum) ---
if [ -z "$missing" ]; then
  free=$(df -Pk -- "$out" 2>/dev/null | { read -r _ || :; read -r _ _ _ avail _ || :; printf '%s' "${avail:-}"; }) || free=''
  case $free in
    '' | *[!0-9]*) say "(Could not read the free space of $out with df; not checked.)" ;;
    *)
      [ ! -f "$partial" ] || free=$((free + $(stat -c %s -- "$partial") / 1024))
      if [ "$free" -lt $(((need + 1023) / 1024)) ]; then
        fail 2 "not enough space in $out: $version.tar needs $need bytes ($(((need + 1048575) / 1048576)) MiB)," \
          "$free KiB are free. Nothing was written. Free space there, or give another directory:" \
          "sh $(quote "$here/reassemble.sh") /path/with/space"
      fi
      ;;
  esac
fi

# --- every part's checksum, before anything is written ---
say "Checking $count parts of $version.tar in $here ..."
damaged=''
while read -r sum name _ || [ -n "${sum:-}" ]; do
  [ -n "$sum" ] || continue
  name=${name%"$cr"}
  name=${name#\*}
  [ -f "$here/$name" ] || { say "  $name: MISSING"; continue; }
  if [ "$(sha256_of "$here/$name")" = "$sum" ]; then
    say "  $name: OK"
  else
    say "  $name: DAMAGED"
    damaged="$damaged $name"
  fi
done < "$list"
if [ -n "$missing$damaged" ]; then
  for name in $missing; do printf 'reassemble.sh: missing: %s\n' "$name" >&2; done
  for name in $damaged; do
    printf 'reassemble.sh: damaged: %s (its sha256 is not the one PARTS.SHA256SUMS lists)\n' "$name" >&2
  done
  fail 1 "Nothing was written. Copy the part(s) named above again from the media into $here," \
    "then run this again: sh $(quote "$here/reassemble.sh")${1:+ $(quote "$out")}"
fi

# --- join into .partial, check the whole, and only then name it <version>.tar ---
trap 'rm -f -- "$partial"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
rm -f -- "$partial"
say "Joining them into $partial ..."
set --
while read -r sum name _ || [ -n "${sum:-}" ]; do
  [ -n "$sum" ] || continue
  name=${name%"$cr"}
  set -- "$@" "$here/${name#\*}"
done < "$list"
cat -- "$@" > "$partial" || fail 2 "writing $partial failed (disk full?)." \
  "Nothing named $version.tar was written; free space in $out and run this again."
say "Checking $version.tar against $tarname.sha256 ..."
got=$(sha256_of "$partial")
if [ "$got" != "$want" ]; then
  fail 1 "the joined tar's sha256 is $got, not $want as $tarname.sha256 says, although every" \
    "part matched PARTS.SHA256SUMS: one of the two lists was altered, or $out wrote it wrongly." \
    "Nothing named $version.tar was written. Copy the whole <version>.parts/ directory again."
fi
sync -- "$partial" 2>/dev/null || sync
mv -f -- "$partial" "$tar"
if [ "$here" != "$out" ]; then
  printf '%s  %s\n' "$want" "$tarname" > "$tar.sha256.partial"
  mv -f -- "$tar.sha256.partial" "$tar.sha256"
fi
say "OK: $tar is whole (sha256 $want)."
next
