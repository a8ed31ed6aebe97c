#!/usr/bin/env bash
# Installs everything Tartarus needs to build, test and run on Debian 12, from Debian's
# packages only. Idempotent and quick when everything is already there.
set -euo pipefail

packages=(
  # build
  cmake ninja-build g++ clang libclang-rt-14-dev clang-format pkg-config git
  libgtest-dev libgmock-dev libbenchmark-dev libboost-dev nlohmann-json3-dev
  libcli11-dev libspdlog-dev libfmt-dev libsqlite3-dev libpq-dev libyaml-cpp-dev
  libseccomp-dev libcap-dev
  # isolation backends
  runc crun runsc
  # templates
  debootstrap e2fsprogs busybox-static ca-certificates
  # tests and benchmarks
  iproute2 procps util-linux bubblewrap hyperfine
  # tartarus-vmm: test guests are assembled with binutils; iasl checks generated ACPI tables;
  # QEMU boots the microVM guest side (kernel, initramfs, agent) where KVM cannot, and is
  # the peer of bench/vmm_start_bench
  binutils acpica-tools cpio qemu-system-x86
  # control-plane store tests (a throwaway PostgreSQL cluster)
  postgresql
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: run as root (apt-get needs it)" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
