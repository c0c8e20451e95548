#!/bin/sh
# Runs inside a container of the target OS. Downloads the full dependency
# closure of the requested packages (everything a fresh target lacks) into
# /out/debs, then builds the repository index in /out. Resumable: apt keeps what
# it already downloaded. Args: the packages.
set -eu
export DEBIAN_FRONTEND=noninteractive
mkdir -p /out/debs/partial
apt-get update -qq
# Resolve against the pristine target image first, so nothing installed for the
# index tool below can hide a dependency the targets need.
apt-get install -y -qq --download-only --no-install-recommends \
  -o Dir::Cache::archives=/out/debs "$@"
apt-get install -y -qq --no-install-recommends apt-utils >/dev/null
cd /out
apt-ftparchive packages debs > Packages.new
gzip -9n < Packages.new > Packages.gz.new
apt-ftparchive -o APT::FTPArchive::Release::Origin=gemma-airgap release . > Release.new
rm -rf debs/partial debs/lock
mv Packages.new Packages
mv Packages.gz.new Packages.gz
mv Release.new Release
printf '%s\n' "$@" > packages.list
