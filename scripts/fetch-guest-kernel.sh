#!/bin/sh
# Tartarus tartarus-vmm (the KVM microVM monitor): fetches Debian's cloud kernel for guests.
# Downloads the linux-image-*-cloud-amd64 package with `apt-get download` (no install on the
# host), unpacks it with `dpkg-deb -x` into a state directory and prints the vmlinuz path.
# Idempotent: a kernel already unpacked there is reused; concurrent runs wait for each other.
#
#   scripts/fetch-guest-kernel.sh [STATE_DIR]     (default /var/lib/tartarus/vmm/kernel)
#
# The vmlinuz is a bzImage: `tartarus-vmm --kernel PATH` boots it where the host has
# hardware virtualization (not on PVM hosts, see docs/vmm.md).
set -eu

state_dir=${1:-${TARTARUS_VMM_KERNEL_DIR:-/var/lib/tartarus/vmm/kernel}}

die() {
  echo "fetch-guest-kernel: $*" >&2
  exit 1
}

command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script needs a Debian host"
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found"

# The metapackage names the exact image package, e.g. linux-image-6.1.0-56-cloud-amd64.
package=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
  sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n 1)
[ -n "$package" ] || die "apt-cache knows no linux-image-cloud-amd64 (run apt-get update?)"
release=${package#linux-image-}

unpacked="$state_dir/$package"
vmlinuz="$unpacked/boot/vmlinuz-$release"
mkdir -p "$state_dir"
# One fetch at a time per state dir: a second caller (tests run in parallel) waits, then finds
# the kernel unpacked, instead of replacing the tree while the first one's caller reads it.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$state_dir/.fetch.lock"
  flock 9
fi
if [ -f "$vmlinuz" ]; then
  echo "$vmlinuz"
  exit 0
fi

work=$(mktemp -d "$state_dir/.fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
# apt-get download writes into the current directory; it runs as the _apt user when it can,
# so give that user access to the scratch directory.
chmod 0777 "$work"
(cd "$work" && apt-get download -q "$package" >&2) || die "apt-get download $package failed"
set -- "$work"/*.deb
deb=$1
[ -f "$deb" ] || die "apt-get download produced no .deb"
mkdir -p "$work/root"
dpkg-deb -x "$deb" "$work/root" || die "dpkg-deb -x $deb failed"
[ -f "$work/root/boot/vmlinuz-$release" ] || die "$package has no boot/vmlinuz-$release"
# Publish atomically, so an interrupted run leaves no half-unpacked kernel behind.
rm -rf "$unpacked"
mv "$work/root" "$unpacked"
echo "$vmlinuz"
