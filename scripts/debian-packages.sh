#!/usr/bin/env bash
# Install the Debian packages named on the command line that this machine lacks, saying what each is for.
#
#   scripts/debian-packages.sh PACKAGE "why it is needed" [PACKAGE "why" ...]
#
# Nothing is installed when every package is present. Missing ones are installed with apt-get when this runs
# as root; otherwise the script prints the one command to run (with sudo) and exits 1, so `make` stops with
# the reason instead of apt-get's "Could not open lock file".
set -euo pipefail
missing=()
while (($# >= 2)); do
  pkg=$1 why=$2
  shift 2
  # present: installed as a Debian package, or a command of that name on PATH (e.g. npm from nodesource)
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      && ! command -v "$pkg" >/dev/null 2>&1; then
    echo "needs Debian package $pkg: $why"
    missing+=("$pkg")
  fi
done
((${#missing[@]} == 0)) && exit 0
if [[ $(id -u) -eq 0 ]]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "installed: ${missing[*]}"
else
  echo "not root: install them first, then run make again:" >&2
  echo "  sudo apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
