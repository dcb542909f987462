#!/usr/bin/env bash
# Installs normkit into a temporary prefix with packaging/install.sh and checks the result the
# way a C or C++ project would consume it:
#   - the shared library has its soname and exports only nk_* symbols;
#   - pkg-config: `pkg-config --cflags --libs normkit` builds and runs packaging/consumer;
#   - pkg-config --static lists the system libraries of packaging/static-libs.txt;
#   - CMake: find_package(normkit 0.1) builds packaging/consumer against the shared and the
#     static library, also after the installed tree was moved elsewhere; an incompatible
#     version request fails;
#   - CMake without an install: packaging/consumer pulls the source tree in with FetchContent
#     (the repository's CMakeLists.txt builds it with cargo, in this checkout's target directory
#     so that a release build there is reused) and builds against both libraries.
# Needs cc, pkg-config, cmake, nm and readelf (binutils).
# Usage: packaging/test.sh [--no-build]   (--no-build: install what an earlier install built)
# Honours CARGO_TARGET_DIR (default target/) for the build from the source tree.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"

fail() {
    echo "packaging test FAILED: $*" >&2
    exit 1
}

"$root/packaging/install.sh" --prefix "$prefix" "$@"

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)"
major="${version%%.*}"
rest="${version#*.}"
minor="${rest%%.*}"
if [ "$major" = 0 ]; then soname="libnormkit.so.0.$minor"; else soname="libnormkit.so.$major"; fi
libdir="$prefix/lib"

echo "== shared library: soname and exported symbols"
got="$(readelf -d "$libdir/libnormkit.so.$version" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')"
[ "$got" = "$soname" ] || fail "soname is '$got', expected '$soname'"
exported="$(nm -D --defined-only "$libdir/libnormkit.so.$version" | awk '{print $3}')"
[ -n "$exported" ] || fail "no exported symbols"
others="$(printf '%s\n' "$exported" | grep -v '^nk_' || true)"
[ -z "$others" ] || fail "exports other than nk_*: $others"
echo "soname $got; $(printf '%s\n' "$exported" | wc -l) symbols, all nk_*"

echo "== pkg-config"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
[ "$(pkg-config --modversion normkit)" = "$version" ] || fail "pkg-config version"
# shellcheck disable=SC2046 # word splitting of the flags is intended
cc -std=c11 -Wall -Wextra -Werror "$root/packaging/consumer/main.c" \
    $(pkg-config --cflags --libs normkit) -lm \
    -Wl,-rpath,"$(pkg-config --variable=libdir normkit)" -o "$work/pc_consumer"
"$work/pc_consumer"
readelf -d "$work/pc_consumer" | grep -q "NEEDED.*\[$soname\]" ||
    fail "the pkg-config consumer does not load $soname"
static_libs="$(cat "$root/packaging/static-libs.txt")"
case " $(pkg-config --static --libs normkit) " in
*" $static_libs "*) ;;
*) fail "pkg-config --static --libs lacks '$static_libs': $(pkg-config --static --libs normkit)" ;;
esac

echo "== CMake"
# cmake_build BUILD_DIR SHARED_NAME CMAKE_ARGS...: configures and builds packaging/consumer,
# runs both programs, checks that consumer_shared loads SHARED_NAME and consumer_static no
# libnormkit at all.
cmake_build() {
    local build="$1" shared="$2"
    shift 2
    cmake -S "$root/packaging/consumer" -B "$build" "$@" \
        -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS="-Wall -Wextra -Werror" >"$build.log" 2>&1 ||
        { cat "$build.log"; fail "cmake configure with $*"; }
    cmake --build "$build" >>"$build.log" 2>&1 || { cat "$build.log"; fail "cmake build with $*"; }
    "$build/consumer_shared"
    "$build/consumer_static"
    readelf -d "$build/consumer_shared" | grep -q "NEEDED.*\[$shared\]" ||
        fail "consumer_shared does not load $shared"
    if readelf -d "$build/consumer_static" | grep -q "NEEDED.*libnormkit"; then
        fail "consumer_static loads libnormkit dynamically"
    fi
}
cmake_build "$work/build" "$soname" -DCMAKE_PREFIX_PATH="$prefix"
mv "$prefix" "$work/moved"
cmake_build "$work/build-moved" "$soname" -DCMAKE_PREFIX_PATH="$work/moved"

cat >"$work/too_new.cmake" <<CMAKE
cmake_minimum_required(VERSION 3.16)
project(too_new C)
find_package(normkit $((major + 1)).0 QUIET)
if(normkit_FOUND)
  message(FATAL_ERROR "a request for normkit $((major + 1)).0 accepted version $version")
endif()
CMAKE
mkdir -p "$work/too_new"
cp "$work/too_new.cmake" "$work/too_new/CMakeLists.txt"
cmake -S "$work/too_new" -B "$work/too_new/build" -DCMAKE_PREFIX_PATH="$work/moved" \
    >"$work/too_new.log" 2>&1 || { cat "$work/too_new.log"; fail "version check"; }

echo "== CMake from the source tree (FetchContent, no install)"
cargo_target="${CARGO_TARGET_DIR:-target}"
case "$cargo_target" in
/*) ;;
*) cargo_target="$root/$cargo_target" ;;
esac
# The development libraries of target/release: the .so has no soname, so programs name it by file.
cmake_build "$work/build-source" libnormkit.so -DNORMKIT_SOURCE_DIR="$root" \
    -DNORMKIT_CARGO_TARGET_DIR="$cargo_target"
grep -q "cargo build --release --lib" "$work/build-source.log" ||
    fail "the build from the source tree did not run cargo"

echo "packaging test passed"
