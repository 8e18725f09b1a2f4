#!/bin/sh
# images/Dockerfile's build step: `build-static.sh <package> <bin>...` builds
# the binaries of one package for the native musl target (static, crt-static
# is that target's default) and installs them into /out. Fails if one of them
# asks for a program interpreter (dynamically linked): the CNI plugin runs on
# hosts whose libc we do not know.
set -eu
pkg=$1
shift
target="$(uname -m)-unknown-linux-musl"
# The workspace's profile for shipped binaries when it has one (release +
# LTO), else plain release. PROFILE=... overrides.
if [ -z "${PROFILE:-}" ]; then
  if grep -q '^\[profile\.dist\]' Cargo.toml; then PROFILE=dist; else PROFILE=release; fi
fi
bins=""
for b in "$@"; do bins="$bins --bin $b"; done
# shellcheck disable=SC2086 # one word per --bin argument
cargo build --profile "$PROFILE" --locked --target "$target" -p "$pkg" $bins
for b in "$@"; do
  install -D -m 0755 "target/$target/$PROFILE/$b" "/out/$b"
  if readelf -l "/out/$b" | grep -q 'program interpreter'; then
    echo "build-static.sh: /out/$b is dynamically linked" >&2
    exit 1
  fi
done
