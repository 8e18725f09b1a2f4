#!/usr/bin/env bash
# Installs the system tools the suite's tests and walk drive for real:
# loop devices and filesystems (util-linux, mount, e2fsprogs, xfsprogs), network
# namespaces, routes and masquerade (iproute2, procps, nftables), etcd for the
# real control-plane tests, and the protobuf toolchain is pure Rust (protox), so
# no protoc is needed. Idempotent; does nothing when everything is present.
set -euo pipefail

# command -> Debian package
declare -A need=(
  [losetup]=util-linux
  [blkid]=util-linux
  [mkfs.ext4]=e2fsprogs
  [resize2fs]=e2fsprogs
  [mkfs.xfs]=xfsprogs
  [xfs_growfs]=xfsprogs
  [ip]=iproute2
  [nft]=nftables
  [sysctl]=procps
  [findmnt]=util-linux
  [blockdev]=util-linux
  [mount]=mount
  [e2fsck]=e2fsprogs
  [etcd]=etcd-server  # the real control plane tests (kube-apiserver: docs/TESTING.md)
)

missing=()
for cmd in "${!need[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/sbin/$cmd" ] && ! [ -x "/usr/sbin/$cmd" ]; then
    missing+=("${need[$cmd]}")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

# Deduplicate package names.
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: missing ${pkgs[*]} and cannot apt-get install them here (not root or no apt); privileged tests will say what they need" >&2
  exit 0
fi
echo "install-deps: installing ${pkgs[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
