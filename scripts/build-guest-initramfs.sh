#!/bin/sh
# Tartarus microvm backend (guest side): builds the initramfs a microVM boots with. It holds
# the static guest agent as /init (its init mode mounts the sandbox root, guest/init.h) and
# the kernel modules the Debian cloud kernel needs as modules for a virtio-mmio machine
# (virtio_mmio, virtio_blk, overlay, vsock over virtio, virtio-rng, and virtio-console for
# tartarus.agent_tty) with their dependencies, a modules.dep for them and the list to load
# (lib/modules/tartarus.modules).
#
#   scripts/build-guest-initramfs.sh [--agent PATH] [--out DIR] [VMM_STATE_DIR]
#
# VMM_STATE_DIR defaults to /var/lib/tartarus/vmm; the kernel is fetched into its kernel/
# by scripts/fetch-guest-kernel.sh when missing. Writes DIR/initramfs-<release>.cpio.gz
# (DIR defaults to VMM_STATE_DIR) and prints its path. Cached: rebuilt only when the agent,
# the kernel or this script changed. Progress goes to stderr.
set -eu

die() {
  echo "build-guest-initramfs: $*" >&2
  exit 1
}
say() { echo "build-guest-initramfs: $*" >&2; }

script_dir=$(cd "$(dirname "$0")" && pwd)
agent=""
out_dir=""
while [ $# -gt 0 ]; do
  case $1 in
    --agent) [ $# -ge 2 ] || die "--agent needs a path"; agent=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out_dir=$2; shift 2 ;;
    -h | --help) sed -n '2,14p' "$0" >&2; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[ $# -le 1 ] || die "too many arguments (see --help)"
state_dir=${1:-${TARTARUS_VMM_DIR:-/var/lib/tartarus/vmm}}
out_dir=${out_dir:-$state_dir}

for tool in cpio gzip objcopy readelf strip sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run scripts/install-deps.sh"
done

if [ -z "$agent" ]; then
  for candidate in "$script_dir/../build/bin/tartarus-agent" "$(command -v tartarus-agent || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then agent=$candidate; break; fi
  done
  [ -n "$agent" ] || die "no tartarus-agent found: build it (ninja tartarus-agent) or pass --agent PATH"
fi
[ -x "$agent" ] || die "agent $agent is not an executable file"
# The initramfs has no libc: a dynamically linked agent could not start as /init.
if readelf -l "$agent" 2>/dev/null | grep -q 'program interpreter'; then
  die "agent $agent is dynamically linked; the initramfs needs the static build"
fi

say "kernel: scripts/fetch-guest-kernel.sh $state_dir/kernel"
vmlinuz=$("$script_dir/fetch-guest-kernel.sh" "$state_dir/kernel") || die "fetching the guest kernel failed"
release=${vmlinuz##*/vmlinuz-}
kernel_root=${vmlinuz%/boot/vmlinuz-*}
moddir="$kernel_root/lib/modules/$release"
[ -d "$moddir" ] || die "$moddir missing: the kernel package has no modules"

# What a virtio-mmio microVM with a vsock and an ext4 + overlay root needs. Each is either
# built in (modules.builtin) or shipped with its dependencies.
wanted="virtio_mmio virtio_blk overlay vsock vmw_vsock_virtio_transport virtio_rng virtio_console"

# name -> path of its .ko under $moddir ('-' and '_' are the same to the kernel), from an
# index of every module built once.
module_path() {
  awk -v name="$(echo "$1" | tr '-' '_')" '$1 == name { print $2; exit }' "$module_index"
}
is_builtin() {
  name=$(echo "$1" | tr '-' '_')
  [ -f "$moddir/modules.builtin" ] &&
    tr '-' '_' <"$moddir/modules.builtin" | grep -q "/$name\.ko\$"
}
# The .ko's own record of what it needs (depmod reads the same field).
module_depends() {
  tmp_info=$(mktemp)
  objcopy -O binary --only-section=.modinfo "$moddir/$1" "$tmp_info" 2>/dev/null ||
    die "cannot read .modinfo of $1"
  tr '\0' '\n' <"$tmp_info" | sed -n 's/^depends=//p' | tr ',' ' '
  rm -f "$tmp_info"
}

agent_sum=$(sha256sum <"$agent" | cut -d' ' -f1)
script_sum=$(sha256sum <"$0" | cut -d' ' -f1)
stamp_text="agent $agent_sum
kernel $release
script $script_sum"
output="$out_dir/initramfs-$release.cpio.gz"
stamp="$out_dir/initramfs-$release.stamp"
if [ -f "$output" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_text" ]; then
  say "up to date: $output"
  echo "$output"
  exit 0
fi

mkdir -p "$out_dir"
work=$(mktemp -d "$out_dir/.initramfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root/dev" "$root/proc" "$root/sys" "$root/lib/modules/$release"
module_index="$work/modules.index"
(cd "$moddir" && find kernel -name '*.ko') |
  awk '{ n = $0; sub(/.*\//, "", n); sub(/\.ko$/, "", n); gsub(/-/, "_", n); print n, $0 }' \
    >"$module_index"
# Symbols and debug info are most of the agent's size; they stay in the build.
strip -o "$root/init" "$agent" || die "strip $agent failed"
chmod 0755 "$root/init"
# The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
if [ "$(id -u)" -eq 0 ]; then
  mknod -m 600 "$root/dev/console" c 5 1
  mknod -m 666 "$root/dev/null" c 1 3
else
  say "not root: no /dev/console in the archive (the kernel's built-in one is used)"
fi

say "resolving modules for $release"
: >"$work/load"
: >"$work/closure"
queue=""
for name in $wanted; do
  path=$(module_path "$name")
  if [ -n "$path" ]; then
    echo "$name" >>"$work/load"
    queue="$queue $path"
  elif is_builtin "$name"; then
    say "  $name: built in"
  else
    die "kernel $release has no module $name and does not build it in"
  fi
done
# Breadth-first over depends=, each module once.
while [ -n "$(echo "$queue" | tr -d ' ')" ]; do
  next=""
  for path in $queue; do
    grep -qxF "$path" "$work/closure" && continue
    echo "$path" >>"$work/closure"
    deps=""
    for dep in $(module_depends "$path"); do
      dep_path=$(module_path "$dep")
      [ -n "$dep_path" ] || die "$path depends on $dep, which $release does not ship"
      deps="$deps $dep_path"
      next="$next $dep_path"
    done
    echo "$path:$deps" >>"$root/lib/modules/$release/modules.dep"
    mkdir -p "$root/lib/modules/$release/$(dirname "$path")"
    cp "$moddir/$path" "$root/lib/modules/$release/$path"
    say "  $(basename "$path")${deps:+ (needs$(for d in $deps; do printf ' %s' "$(basename "$d" .ko)"; done))}"
  done
  queue=$next
done
cp "$work/load" "$root/lib/modules/tartarus.modules"

say "writing $output"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
  gzip -9n >"$work/initramfs.cpio.gz" || die "cpio | gzip failed"
mv "$work/initramfs.cpio.gz" "$output"
printf '%s\n' "$stamp_text" >"$stamp.tmp" && mv "$stamp.tmp" "$stamp"
echo "$output"
