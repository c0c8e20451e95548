#!/bin/sh
# The control-node kit: installs Ansible and the bundle's collections on the control node
# inside the closed network, from this directory alone. No network; read-only media is fine.
#
#   sudo sh /media/bundle/<version>/control-node/install.sh --signer <fingerprint> [PREFIX]
#   (PREFIX: default /opt/gemma-airgap)
#
# 0. The bundle's signature: SHA256SUMS.sig must verify (gpgv or sqv, with the key the bundle
#    carries) as made by the key whose fingerprint --signer gives (the one prepare printed and
#    the inventory pins, given to you apart from the media); then every file of the kit must
#    be listed in SHA256SUMS and match it. Nothing is installed otherwise.
# 1. The kit's OS packages (packages/: python3-venv, rsync, openssh-client, as prepare.yml
#    resolved them for this OS) when `python3 -m venv`, rsync or ssh is missing: apt-get with
#    the kit as its only source, its Release signed by the same key. Only this step needs root.
# 2. A virtual environment at PREFIX/venv with the pinned wheels (pip --no-index).
# 3. Every collection tarball of collections/ (ansible-galaxy --offline) into the venv's
#    site-packages, where Ansible finds them with no configuration.
# 4. A self-check (ansible --version, ansible-galaxy collection list), then one OK line.
# Running it again is harmless: what is already there and right is kept.
set -eu
# What it makes is used by the operator who deploys, whatever root's umask is.
umask 022

SIGNER=""
case ${1:-} in
  --signer) [ $# -ge 2 ] || { echo "install.sh: --signer needs a fingerprint" >&2; exit 2; }
    SIGNER=$2; shift 2 ;;
  --signer=*) SIGNER=${1#--signer=}; shift ;;
esac
PREFIX=${1:-/opt/gemma-airgap}
case $PREFIX in /*) ;; *) PREFIX=$(pwd)/$PREFIX ;; esac
VENV=$PREFIX/venv
STEP="reading the kit"
WORK=""

say() { printf 'install.sh: %s\n' "$*"; }
die() {
  DIED=1
  printf 'install.sh: ERROR: %s\n' "$1" >&2
  shift
  for line in "$@"; do printf '  %s\n' "$line" >&2; done
  exit 1
}
# shellcheck disable=SC2317  # run by the EXIT trap
finish() {
  rc=$?
  [ -n "$WORK" ] && rm -rf "$WORK"
  if [ "$rc" -ne 0 ] && [ -z "${DIED:-}" ]; then
    printf 'install.sh: ERROR: failed while %s (exit %s); the messages above say why.\n' \
      "$STEP" "$rc" >&2
    printf '  Fix that and run install.sh again: it keeps what is already done.\n' >&2
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

KIT=$(cd "$(dirname "$0")" && pwd -P)
BUNDLE=$(dirname "$KIT")
CHECK_MEDIA="Check the media: cd $BUNDLE && sha256sum -c SHA256SUMS; then copy the bundle again."

# --- 0. the bundle's signature, then the kit's own files against SHA256SUMS ---
STEP="checking the bundle's signature"
[ -n "$SIGNER" ] || die "Say which key the bundle must be signed by:" \
  "sh $KIT/install.sh --signer <fingerprint> $PREFIX" \
  "The fingerprint is the one prepare printed (\"Signed by ...\") and the inventory pins" \
  "(gemma_airgap_bundle_signers), given to you apart from the media."
WANT=$(printf '%s' "$SIGNER" | tr -d ' \t' | tr 'abcdefx' 'ABCDEFX')
WANT=${WANT#0X}
case $WANT in *[!0-9A-F]* | "") die "--signer $SIGNER is not an OpenPGP fingerprint." ;; esac
[ ${#WANT} -eq 40 ] || [ ${#WANT} -eq 64 ] ||
  die "--signer $SIGNER is not a whole fingerprint (40 or 64 hex digits; a key ID is too short)."
for part in SHA256SUMS SHA256SUMS.sig SHA256SUMS.keys; do
  { [ -f "$BUNDLE/$part" ] && [ ! -L "$BUNDLE/$part" ]; } ||
    die "The bundle has no $part: it is not signed, and is not used." \
      "Copy the signed bundle again from the staging side; nothing was installed."
done
FOUND=""
SIGWORK=$(mktemp -d)
if command -v gpgv >/dev/null 2>&1; then
  if out=$(GNUPGHOME=$SIGWORK LC_ALL=C gpgv --status-fd 1 --keyring "$BUNDLE/SHA256SUMS.keys" \
    "$BUNDLE/SHA256SUMS.sig" "$BUNDLE/SHA256SUMS" 2>/dev/null); then
    FOUND=$(printf '%s\n' "$out" | sed -n 's/^\[GNUPG:\] VALIDSIG .* \([0-9A-F]*\)$/\1/p')
  fi
elif command -v sqv >/dev/null 2>&1; then
  FOUND=$(LC_ALL=C sqv --keyring "$BUNDLE/SHA256SUMS.keys" --signature-file \
    "$BUNDLE/SHA256SUMS.sig" "$BUNDLE/SHA256SUMS" 2>/dev/null) || FOUND=""
else
  rm -rf "$SIGWORK"
  die "This host has no OpenPGP verifier (gpgv or sqv) to check the bundle's signature." \
    "Install the package gpgv (apt systems have it or sqv), then run install.sh again."
fi
rm -rf "$SIGWORK"
[ -n "$FOUND" ] || die "The bundle's signature does not verify: SHA256SUMS was changed after" \
  "it was signed, or it was signed by a key the bundle does not carry. Expected a signature by" \
  "$WANT. Copy the bundle again from the staging side; nothing was installed."
printf '%s\n' "$FOUND" | grep -qx "$WANT" ||
  die "The bundle is signed by $(printf '%s' "$FOUND" | tr '\n' ' ' | sed 's/ *$//'), which is not the key given;" \
    "expected $WANT. Nothing was installed."
say "bundle signed by $WANT"
STEP="checking the kit's files"
# Every file of the kit listed in SHA256SUMS (plain "<hex>  control-node/..." lines, as
# prepare writes them) and matching it: nothing unlisted is ever installed.
( cd "$BUNDLE" && grep '^[0-9a-f]\{64\}  control-node/' SHA256SUMS | sha256sum -c --strict --quiet ) ||
  die "A file of the kit does not match SHA256SUMS (above)." "$CHECK_MEDIA"
LISTED=$(cut -c67- "$BUNDLE/SHA256SUMS")
UNLISTED=$(find "$KIT" -type f | while IFS= read -r file; do
  printf '%s\n' "$LISTED" | grep -Fxq "control-node/${file#"$KIT"/}" || printf '%s ' "${file#"$KIT"/}"
done)
[ -z "$UNLISTED" ] || die "The kit holds files SHA256SUMS does not list: $UNLISTED" "$CHECK_MEDIA"

# --- the kit itself ---
[ -f "$KIT/kit.env" ] || die "$KIT/kit.env is missing: this is not a whole control-node kit." \
  "$CHECK_MEDIA"
# shellcheck disable=SC1091  # written by prepare.yml, values quoted
. "$KIT/kit.env"
for part in requirements.txt wheels; do
  [ -e "$KIT/$part" ] || die "The kit lacks $part ($KIT/$part)." "$CHECK_MEDIA"
done
[ -n "${KIT_COLLECTIONS:-}" ] || die "kit.env names no collection tarball." "$CHECK_MEDIA"
for artifact in $KIT_COLLECTIONS; do
  case $artifact in
    *.tar.gz) ;;
    *) die "kit.env names $artifact, not a collection tarball." "$CHECK_MEDIA" ;;
  esac
  case $artifact in
    -* | */* | .*) die "kit.env names a tarball with an unsafe name: $artifact" "$CHECK_MEDIA" ;;
  esac
  [ -f "$KIT/collections/$artifact" ] ||
    die "The kit lacks the collection tarball collections/$artifact." "$CHECK_MEDIA"
done
CORE_VERSION=$(sed -n 's/^[Aa]nsible[-_]core==\([^ ;#]*\).*/\1/p' "$KIT/requirements.txt")

say "kit of bundle $KIT_BUNDLE_VERSION for $KIT_PLATFORM (Python $KIT_PYTHON): $KIT"
say "installing into $VENV"

# --- 1. the OS packages, only when something they provide is missing ---
STEP="checking this host"
if [ -n "$KIT_MACHINE" ] && [ "$(uname -m)" != "$KIT_MACHINE" ]; then
  die "This host is $(uname -m); the kit is for $KIT_MACHINE ($KIT_PLATFORM)." \
    "Build a bundle whose bundle_control_node_platform matches this host's OS and machine."
fi
missing=""
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' 2>/dev/null; then
  :  # the venv is there: no ensurepip needed
elif ! command -v python3 >/dev/null 2>&1; then
  missing="$missing python3"
elif ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  missing="$missing python3-venv"
fi
# The wheels fit one Python: say so before apt changes anything on a host they do not fit.
if command -v python3 >/dev/null 2>&1; then
  HOST_PYTHON=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$HOST_PYTHON" = "$KIT_PYTHON" ] ||
    die "This host's python3 is $HOST_PYTHON; the kit is for Python $KIT_PYTHON ($KIT_PLATFORM)." \
      "Build the bundle with bundle_control_node_platform for this host's OS (python_version:" \
      "\"$HOST_PYTHON\" and its wheel platform tags), or use a control node running $KIT_PLATFORM."
fi
command -v rsync >/dev/null 2>&1 || missing="$missing rsync"
command -v ssh >/dev/null 2>&1 || missing="$missing ssh"

if [ -n "$missing" ]; then
  STEP="installing the kit's OS packages"
  if [ -z "$KIT_OS_PACKAGES" ] || [ ! -f "$KIT/packages/Packages" ]; then
    die "This host lacks:$missing, and the kit carries no OS packages." \
      "Install them from your site's mirror (on Debian: apt-get install python3-venv rsync" \
      "openssh-client), or build the bundle with bundle_control_node_platform.packages set."
  fi
  if [ "$(id -u)" -ne 0 ]; then
    die "This host lacks:$missing. Installing them from the kit needs root." \
      "Run: sudo sh $KIT/install.sh --signer $WANT $PREFIX" \
      "(or have an administrator install: $KIT_OS_PACKAGES; then run install.sh as you)."
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "This host has no apt-get: the kit's packages are for $KIT_PLATFORM." \
      "Use a control node running $KIT_PLATFORM, or build the bundle for this one."
  say "this host lacks:$missing; installing the kit's packages: $KIT_OS_PACKAGES (offline)"
  WORK=$(mktemp -d)
  chmod 755 "$WORK"  # apt's download sandbox (user _apt) reads the repository through it
  mkdir -p "$WORK/lists/partial" "$WORK/parts"
  ln -s "$KIT/packages" "$WORK/repo"  # a path without spaces for the source line
  # apt checks the kit's Release.gpg itself, accepting only the key given by --signer.
  cp "$BUNDLE/SHA256SUMS.keys" "$WORK/keys.gpg"
  chmod 644 "$WORK/keys.gpg"
  printf 'deb [signed-by=%s,%s] file:%s ./\n' "$WORK/keys.gpg" "$WANT" "$WORK/repo" \
    >"$WORK/sources.list"
  # The kit is apt's only source (the system's sources and lists are not read or changed),
  # with lists of its own, so no older index stands in for one whose signature fails.
  set -- -o "Dir::Etc::SourceList=$WORK/sources.list" -o "Dir::Etc::SourceParts=$WORK/parts" \
    -o "Dir::State::Lists=$WORK/lists" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" \
    -o Acquire::AllowInsecureRepositories=false -o APT::Get::AllowUnauthenticated=false
  if ! LC_ALL=C apt-get "$@" -q update >"$WORK/apt.log" 2>&1; then
    cat "$WORK/apt.log" >&2
    die "apt-get could not read the kit's package index ($KIT/packages), or refused it:" \
      "its Release must be signed (packages/Release.gpg) by $WANT (apt's messages are above)." \
      "$CHECK_MEDIA"
  fi
  # shellcheck disable=SC2086  # a list of package names
  if ! DEBIAN_FRONTEND=noninteractive apt-get "$@" -y -q --no-install-recommends --no-remove \
    install $KIT_OS_PACKAGES >"$WORK/apt.log" 2>&1; then
    cat "$WORK/apt.log" >&2
    die "apt-get could not install $KIT_OS_PACKAGES from the kit (its messages are above)." \
      "The kit's packages were resolved for $KIT_PLATFORM in the image $KIT_IMAGE. If this" \
      "host has other versions of what they depend on (e.g. a newer python3.13), install" \
      "$KIT_OS_PACKAGES from your site's mirror and run install.sh again, or build the" \
      "bundle with bundle_control_node_platform.image closer to this host."
  fi
  newly=$(sed -n 's/^Setting up \([^ ]*\) .*/\1/p' "$WORK/apt.log" | tr '\n' ' ' | sed 's/ $//')
  say "installed from the kit: ${newly:-nothing new}"
  rm -rf "$WORK"
  WORK=""
fi

STEP="checking this host's Python"
command -v python3 >/dev/null 2>&1 ||
  die "python3 is missing." "Install the OS's python3 (Python $KIT_PYTHON) and run install.sh again."
HOST_PYTHON=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$HOST_PYTHON" != "$KIT_PYTHON" ]; then
  die "This host's python3 is $HOST_PYTHON; the kit's wheels are for Python $KIT_PYTHON ($KIT_PLATFORM)." \
    "Build the bundle with bundle_control_node_platform for this host's OS (python_version:" \
    "\"$HOST_PYTHON\" and its wheel platform tags), or use a control node running $KIT_PLATFORM."
fi

# Every pinned requirement has its wheel here, before pip is asked (pip's own message names
# only the first one missing).
STEP="checking the kit's wheels"
python3 - "$KIT/requirements.txt" "$KIT/wheels" <<'EOF' || die "The kit's wheels/ is incomplete (listed above)." "$CHECK_MEDIA"
import os, re, sys
def norm(name):
    return re.sub(r"[-_.]+", "_", name).lower()
have = set()
for wheel in os.listdir(sys.argv[2]):
    if wheel.endswith(".whl"):
        parts = wheel.split("-")
        have.add((norm(parts[0]), parts[1]))
missing = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].split(";", 1)[0].strip()
    match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(\S+)$", line)
    if match and (norm(match[1]), match[2]) not in have:
        missing.append(f"{match[1]}=={match[2]}")
for requirement in missing:
    print(f"install.sh: missing from the kit: {requirement} (no wheel for it in {sys.argv[2]})",
          file=sys.stderr)
sys.exit(1 if missing else 0)
EOF

# --- 2. the virtual environment and the wheels ---
STEP="creating $PREFIX"
if ! mkdir -p "$PREFIX" 2>/dev/null || [ ! -w "$PREFIX" ]; then
  die "Cannot write $PREFIX." "Run as root (sudo sh $KIT/install.sh $PREFIX), or give a directory you can write: sh $KIT/install.sh \$HOME/gemma-airgap"
fi
STEP="creating the virtual environment $VENV"
if [ -x "$VENV/bin/python" ] &&
  [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$KIT_PYTHON" ] &&
  "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  say "virtual environment $VENV is there"
else
  if [ -e "$VENV" ]; then
    say "virtual environment $VENV is unusable (another Python or no pip): recreating it"
    rm -rf "$VENV"
  fi
  python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (its message is above)." \
    "On Debian/Ubuntu it needs python3-venv: run install.sh as root so it installs it from the kit."
  say "created the virtual environment $VENV"
fi

STEP="installing the wheels"
# Only the kit's wheels, whatever pip configuration this host has.
if ! PIP_CONFIG_FILE=/dev/null PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
  PIP_NO_INPUT=1 "$VENV/bin/python" -m pip install -q --no-cache-dir --no-index \
  --find-links "$KIT/wheels" -r "$KIT/requirements.txt"; then
  die "pip could not install the kit's requirements.txt from its wheels (pip's message is above)." \
    "The wheels are for $KIT_PLATFORM, Python $KIT_PYTHON ($KIT_MACHINE); a wheel for another" \
    "Python or platform is not installable here. $CHECK_MEDIA"
fi

# --- 3. the collections, into the venv's site-packages (found there with no configuration) ---
STEP="installing the collections"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cd "$PREFIX"  # no ansible.cfg of the directory install.sh was started from
# Installed again whenever a tarball differs from the last install (by checksum, not by
# version: a new bundle may carry changed roles under the same collection version).
RECORD=$VENV/.kit-collections.sha256
set --
for artifact in $KIT_COLLECTIONS; do
  set -- "$@" "$KIT/collections/$artifact"
done
# shellcheck disable=SC2086  # KIT_COLLECTIONS (kit.env) is a list of plain file names
wanted=$(cd "$KIT/collections" && sha256sum -- $KIT_COLLECTIONS) ||
  die "Cannot read the kit's collection tarballs." "$CHECK_MEDIA"
stale=""
if [ "$(cat "$RECORD" 2>/dev/null)" != "$wanted" ]; then
  # shellcheck disable=SC2086  # as above
  stale=$(printf '%s\n' $KIT_COLLECTIONS | sed 's/-[0-9][^-]*\.tar\.gz$//; s/-/./' | tr '\n' ' ')
fi
if [ -n "$stale" ]; then
  say "installing the collections (${stale# }) into $SITE/ansible_collections"
  # All of them at once, so every dependency resolves from the kit's tarballs alone.
  ANSIBLE_COLLECTIONS_PATH="$SITE" "$VENV/bin/ansible-galaxy" collection install --offline \
    --force -p "$SITE" "$@" ||
    die "ansible-galaxy could not install the kit's collections (its message is above)." \
      "A tarball it names as unreadable or corrupt: $CHECK_MEDIA"
  printf '%s\n' "$wanted" >"$RECORD"
else
  say "the collections are there"
fi

# --- 4. the self-check ---
STEP="checking the installation"
version_out=$("$VENV/bin/ansible" --version 2>&1) ||
  die "$VENV/bin/ansible --version failed:" "$version_out" \
    "If it names the locale, set one this host has, e.g. export LC_ALL=C.UTF-8"
core=$(printf '%s\n' "$version_out" | sed -n '1s/.*\[core \([^]]*\)\].*/\1/p')
python_full=$(printf '%s\n' "$version_out" | sed -n 's/^ *python version = \([^ ]*\).*/\1/p')
[ "$core" = "$CORE_VERSION" ] ||
  die "ansible --version says ansible-core '$core'; the kit pins $CORE_VERSION." "$version_out"
case $python_full in
  "$KIT_PYTHON".*) ;;
  *) die "ansible runs on Python '$python_full', not $KIT_PYTHON." "$version_out" ;;
esac
listing=$("$VENV/bin/ansible-galaxy" collection list --format json 2>/dev/null) ||
  die "ansible-galaxy collection list failed." "Run $VENV/bin/ansible-galaxy collection list to see why."
summary=$(printf '%s' "$listing" | "$VENV/bin/python" -c '
import json, sys
paths = json.load(sys.stdin)  # in the order Ansible searches them
problems, found = [], []
for artifact in sys.argv[1].split():
    namespace, name, version = artifact[: -len(".tar.gz")].split("-", 2)
    full = f"{namespace}.{name}"
    first = next(((path, info[full]["version"]) for path, info in paths.items()
                  if full in info), None)
    if first is None:
        problems.append(f"{full} is not listed by ansible-galaxy collection list")
    elif first[1] != version:
        problems.append(f"{full} {first[1]} in {first[0]} comes before the kit'\''s {version}: "
                        "remove it there (or reorder collections_path)")
    else:
        found.append(f"{full} {version}")
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(", ".join(found))
' "$KIT_COLLECTIONS") || die "The collections Ansible finds are not the kit's (above)." \
  "Fix that and run install.sh again."

STEP="done"
say "OK: ansible-core $core (Python $python_full) in $VENV; collections: $summary"
example=$SITE/ansible_collections/gemma_airgap/ollama/inventories/production.example
cat <<EOF
Next, as the user who runs deployments:
  . $VENV/bin/activate        (or call $VENV/bin/ansible-playbook directly)
  ansible-playbook -i <inventory> gemma_airgap.ollama.deploy -e release_source=$BUNDLE
EOF
[ -d "$example" ] && printf '  A documented inventory to start from: %s\n' "$example"
exit 0
