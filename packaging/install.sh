#!/usr/bin/env bash
# Builds normkit in release mode and installs it under a prefix, the layout cargo-c's
# `cargo cinstall` would give:
#
#   PREFIX/include/normkit.h
#   LIBDIR/libnormkit.a
#   LIBDIR/libnormkit.so.X.Y.Z, with the soname link (libnormkit.so.0.Y while the major
#          version is 0, else libnormkit.so.X) and the development link libnormkit.so
#   LIBDIR/pkgconfig/normkit.pc
#   LIBDIR/cmake/normkit/normkitConfig.cmake, normkitConfigVersion.cmake
#
# Usage: packaging/install.sh [--prefix DIR] [--libdir DIR] [--destdir DIR] [--no-build]
#   --prefix   where the package lives (default /usr/local)
#   --libdir   libraries directory (default PREFIX/lib)
#   --destdir  staging root prepended to every installed path (for packagers); the
#              installed files still name PREFIX
#   --no-build install what an earlier run built (in target/packaging)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix=/usr/local
libdir=
destdir=
build=1
while [ $# -gt 0 ]; do
    case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --libdir) libdir="$2"; shift 2 ;;
    --destdir) destdir="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$prefix" in
/*) ;;
*) prefix="$(pwd)/$prefix" ;;
esac
libdir="${libdir:-$prefix/lib}"
case "$libdir" in
/*) ;;
*) libdir="$prefix/$libdir" ;;
esac

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)"
major="${version%%.*}"
rest="${version#*.}"
minor="${rest%%.*}"
if [ "$major" = 0 ]; then
    soname="libnormkit.so.0.$minor"
else
    soname="libnormkit.so.$major"
fi

# What a static link needs besides libnormkit.a, as rustc prints it (also checked by
# tests/c_api.rs): Libs.private of the .pc file, the link interface of normkit::normkit_static.
read -r -a static_libs <"$root/packaging/static-libs.txt" || true
[ "${#static_libs[@]}" -gt 0 ] || { echo "install.sh: packaging/static-libs.txt is empty" >&2; exit 1; }

if [ "$build" = 1 ]; then
    # The installed shared library carries its soname. It is built in a target directory of
    # its own: the one `cargo build` leaves in target/release for development has no soname,
    # so that `-Ltarget/release -lnormkit` just works. rustc prints the static library's
    # system libraries (cargo repeats the note when the build is up to date).
    log="$root/target/packaging/native-static-libs.log"
    mkdir -p "$root/target/packaging"
    printed=()
    # One build gives both libraries (the crate's types): the static one, whose system
    # libraries rustc prints, and the shared one, linked with its soname (the static library
    # is not linked, so the link argument does not touch it).
    (cd "$root" && cargo rustc --release --lib --target-dir target/packaging -- \
        --print native-static-libs -C link-arg=-Wl,-soname,"$soname") 2>&1 | tee "$log"
    read -r -a printed < <(sed -n 's/^note: native-static-libs: //p' "$log") || true
    if [ "${printed[*]}" != "${static_libs[*]}" ]; then
        echo "install.sh: rustc lists '${printed[*]}' for libnormkit.a, packaging/static-libs.txt" \
            "'${static_libs[*]}': write rustc's list into the file" >&2
        exit 1
    fi
fi
release="$root/target/packaging/release"
for f in libnormkit.a libnormkit.so; do
    [ -f "$release/$f" ] || { echo "install.sh: $release/$f missing (build first)" >&2; exit 1; }
done

inc="$destdir$prefix/include"
lib="$destdir$libdir"
mkdir -p "$inc" "$lib/pkgconfig" "$lib/cmake/normkit"

install -m 644 "$root/include/normkit.h" "$inc/normkit.h"
install -m 644 "$release/libnormkit.a" "$lib/libnormkit.a"
install -m 755 "$release/libnormkit.so" "$lib/libnormkit.so.$version"
ln -sf "libnormkit.so.$version" "$lib/$soname"
ln -sf "$soname" "$lib/libnormkit.so"

sed -e "s|@PREFIX@|$prefix|g" -e "s|@LIBDIR@|$libdir|g" -e "s|@VERSION@|$version|g" \
    -e "s|@PRIVATE_LIBS@|${static_libs[*]}|g" \
    "$root/packaging/normkit.pc.in" > "$lib/pkgconfig/normkit.pc"

# The CMake files find the prefix relative to themselves, so a staged or moved tree works.
cmake_dir="$libdir/cmake/normkit"
rel_prefix="$(realpath -m --relative-to="$cmake_dir" "$prefix")"
rel_libdir="$(realpath -m --relative-to="$prefix" "$libdir")"
for f in normkitConfig.cmake normkitConfigVersion.cmake; do
    sed -e "s|@REL_PREFIX@|$rel_prefix|g" -e "s|@REL_LIBDIR@|$rel_libdir|g" \
        -e "s|@VERSION@|$version|g" -e "s|@SONAME@|$soname|g" \
        -e "s|@MAJOR@|$major|g" -e "s|@MINOR@|$minor|g" \
        -e "s|@STATIC_LIBS@|$(IFS=';' && echo "${static_libs[*]}")|g" \
        "$root/packaging/$f.in" > "$lib/cmake/normkit/$f"
done

echo "installed normkit $version under $destdir$prefix (soname $soname)"
