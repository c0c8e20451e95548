#!/bin/sh
# Runs inside a container of the target OS. Downloads the full dependency
# closure of the requested packages (everything a fresh target lacks) into
# /out/debs, then builds the repository index in /out. Resumable: apt keeps what
# it already downloaded. Args: the packages.
set -eu
export DEBIAN_FRONTEND=noninteractive
mkdir -p /out/debs/partial
if [ -n "${NVIDIA_REPO:-}" ]; then
  # GPU sites: NVIDIA's repository, checked against its key fetched by preflight.
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends ca-certificates >/dev/null
  echo "deb [signed-by=/etc/apt/keyrings/nvidia.asc] ${NVIDIA_REPO} /" \
    > /etc/apt/sources.list.d/nvidia-container-toolkit.list
fi
apt-get update -qq
# Resolve against the pristine target image first, so nothing installed for the
# index tool below can hide a dependency the targets need.
apt-get install -y -qq --download-only --no-install-recommends \
  -o Dir::Cache::archives=/out/debs "$@"
apt-get install -y -qq --no-install-recommends apt-utils >/dev/null
cd /out
# The old index's signature goes with it: prepare signs the new Release before the seal.
rm -rf debs/partial debs/lock packages.list Release Release.gpg InRelease os-release
apt-ftparchive packages debs > Packages.new
gzip -9n < Packages.new > Packages.gz.new
mv Packages.new Packages
mv Packages.gz.new Packages.gz
# The Release file lists the indexes by their final names.
apt-ftparchive -o APT::FTPArchive::Release::Origin=gemma-airgap release . > /tmp/Release
mv /tmp/Release Release
# Which OS this repository is for (ID, VERSION_CODENAME): the SBOM's package URLs name it.
cp /etc/os-release os-release
# Written last: its presence says the resolution finished.
printf '%s\n' "$@" > packages.list
