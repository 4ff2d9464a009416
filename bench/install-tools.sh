#!/usr/bin/env bash
# Installs the external load generators the benchmark can drive, from Debian's
# packages: wrk (HTTP/1.1) and h2load (HTTP/2, from nghttp2-client). Both are
# optional: without them the benchmark uses its own load generator only.
set -euo pipefail
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
if [ ${#need[@]} -eq 0 ]; then
  echo "install-tools: wrk and h2load are already installed"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
echo "install-tools: installed ${need[*]}"
