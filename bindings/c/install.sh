#!/usr/bin/env bash
# Installs libgreylist into a prefix: the shared library (SONAME carrying the
# ABI version) and the static library, both stripped, greylist.h, greylist.hpp and greylist.pc.
#
#   bash bindings/c/install.sh [PREFIX]      (default /usr/local; DESTDIR honoured)
#
# Then: cc app.c $(pkg-config --cflags --libs greylist)
set -euo pipefail
cd "$(dirname "$0")/../.."

prefix="${1:-/usr/local}"
dest="${DESTDIR:-}${prefix}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
abi=$(sed -n 's/^pub const GREYLIST_ABI_VERSION: u32 = \([0-9]*\);/\1/p' src/ffi/mod.rs)
[ -n "$version" ] && [ -n "$abi" ] || { echo "install.sh: cannot read version/ABI" >&2; exit 1; }

cargo build --release --lib
# What a program linking the static library also needs (from rustc itself).
static_libs=$(cargo rustc -q --release --lib --crate-type staticlib -- --print native-static-libs 2>&1 \
  | sed -n 's/.*native-static-libs: //p' | head -n1)

install -d "$dest/lib/pkgconfig" "$dest/include"
install -m 0755 target/release/libgreylist.so "$dest/lib/libgreylist.so.$version"
ln -sf "libgreylist.so.$version" "$dest/lib/libgreylist.so.$abi"
ln -sf "libgreylist.so.$abi" "$dest/lib/libgreylist.so"
install -m 0644 target/release/libgreylist.a "$dest/lib/libgreylist.a"
# Stripped, as distributions install libraries (the build keeps its debug
# info in target/release for a debugger).
strip --strip-unneeded "$dest/lib/libgreylist.so.$version"
strip --strip-debug "$dest/lib/libgreylist.a"
install -m 0644 include/greylist.h bindings/cpp/greylist.hpp "$dest/include/"
cat > "$dest/lib/pkgconfig/greylist.pc" <<PC
prefix=$prefix
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: greylist
Description: Embeddable email greylisting engine
Version: $version
Libs: -L\${libdir} -lgreylist
Libs.private: $static_libs
Cflags: -I\${includedir}
PC
echo "installed greylist $version (ABI $abi) into $dest"
