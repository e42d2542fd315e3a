#!/usr/bin/env bash
# Build llama.cpp's reference command-line tools (llama-tokenize, llama-perplexity,
# llama-bench, llama-simple, llama-completion) from THE SAME llama.cpp sources that
# the `llama-cpp-sys-2` crate vendors, so that reference numbers come from exactly
# the library code (ggml kernels, tokenizer, sampler) our Rust binary links.
#
# The crate package ships only the library part of llama.cpp (ggml/, src/, include/,
# common/, vendor/, cmake/) and omits the tool front-ends. Those front-end sources are
# taken from the llama-cpp-python 0.3.36 sdist (PyPI), whose vendored llama.cpp is a
# little older; they are overlaid on a copy of the crate's tree. Nothing of the
# sdist's library code (ggml/, src/, include/, common/) is used.
#
# Configuration mirrors what llama-cpp-sys-2's build.rs actually passes to CMake for
# this workspace. If cargo has already built the crate, the values are read from
# that build's CMakeCache.txt (target/*/build/llama-cpp-sys-2-*/out/build); otherwise
# the defaults below, which equal build.rs's choices for this workspace, are used:
#   .cargo/config.toml target-cpu=native      -> GGML_NATIVE=ON
#   llama-cpp-2 without the openmp feature    -> GGML_OPENMP=OFF (llama-server: ON)
#   no dynamic-link feature                   -> BUILD_SHARED_LIBS=OFF
#   [profile.release] debug = "line-tables-only" -> cargo sets DEBUG=true
#                                             -> CMAKE_BUILD_TYPE=RelWithDebInfo (-O2 -g)
#   cmake-rs/cc default flags                 -> " -ffunction-sections -fdata-sections -fPIC -m64 -w"
# The build type matters beyond speed: with GCC 12 and -O3 (CMAKE_BUILD_TYPE=Release)
# the AMX tile-config stores in ggml-cpu/amx/mmq.cpp (ggml_tile_config_init) are
# dropped, ldtilecfg then loads an invalid config and every tool segfaults in
# ggml_backend_amx_mul_mat on AMX CPUs (upstream: ggml-org/llama.cpp #20824, PR #26954).
# The -O2 code is correct.
#
# Idempotent: a rebuild is skipped when every binary exists, the configuration stamp
# matches, and no input file is newer than the binaries.
#
# LLAMA_REF_SERVER=1 builds llama-server instead (for scripts/bench-serving.sh), in its
# own work dir: its front-end (tools/server, tools/ui, the multimodal helper library
# tools/mtmd whose API the server sources expect, and the UI-assets CMake script) comes
# from the same sdist, the library (ggml, llama, common) from the crate as above; the
# web UI is not built (LLAMA_BUILD_UI=OFF, no prebuilt download), so the binary serves
# the API only.
#
# Output: the last line printed on stdout is the bin directory.
# Environment:
#   LLAMA_REF_DIR  work dir (default: <workspace>/target/llama-reference, or
#                  <workspace>/target/llama-server-reference with LLAMA_REF_SERVER=1)
#   LLAMA_REF_JOBS parallel build jobs (default: 2)
#   LLAMA_REF_FORCE=1  force re-assembly of the source tree and a clean rebuild
#   LLAMA_REF_MINERVA_FLAGS=1  llama-server with Minerva's extra compiler flags too
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SERVER="${LLAMA_REF_SERVER:-0}"
MINERVA_FLAGS="${LLAMA_REF_MINERVA_FLAGS:-0}"
if [ "$SERVER" = 1 ] && [ "$MINERVA_FLAGS" = 1 ]; then
    OUT="${LLAMA_REF_DIR:-$ROOT/target/llama-server-reference-minerva-flags}"
elif [ "$SERVER" = 1 ]; then
    OUT="${LLAMA_REF_DIR:-$ROOT/target/llama-server-reference}"
else
    OUT="${LLAMA_REF_DIR:-$ROOT/target/llama-reference}"
fi
JOBS="${LLAMA_REF_JOBS:-2}"
CACHE="$OUT/cache"
SRC="$OUT/src"
BUILD="$OUT/build"
BIN="$BUILD/bin"

PYPKG_VERSION="0.3.36"
SDIST_NAME="llama_cpp_python-${PYPKG_VERSION}.tar.gz"
SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

TARGETS=(llama-tokenize llama-perplexity llama-bench llama-simple llama-completion)
# front-end directories overlaid from the sdist (relative to its vendor/llama.cpp)
OVERLAY=(tools/tokenize tools/perplexity tools/llama-bench tools/completion examples/simple)
# library directories copied from the crate
LIBRARY=(CMakeLists.txt LICENSE cmake ggml src include common vendor pocs)
TOOLS_CMAKE="add_subdirectory(llama-bench)
add_subdirectory(completion)
add_subdirectory(perplexity)
add_subdirectory(tokenize)"
if [ "$SERVER" = 1 ]; then
    TARGETS=(llama-server)
    OVERLAY=(tools/server tools/ui tools/mtmd scripts/ui-assets.cmake)
    TOOLS_CMAKE="add_subdirectory(mtmd)
add_subdirectory(ui)
add_subdirectory(server)"
fi

log() { echo "[build-llama-cpp] $*" >&2; }

# ---------------------------------------------------------------- 1. crate sources
META="$(cd "$ROOT" && cargo metadata --format-version 1 2>/dev/null | python3 2>/dev/null -c '
import json, os, sys
m = json.load(sys.stdin)
p = [p for p in m["packages"] if p["name"] == "llama-cpp-sys-2"]
if len(p) != 1:
    sys.exit("expected exactly one llama-cpp-sys-2 package, found %d" % len(p))
print(os.path.dirname(p[0]["manifest_path"]))
print(m["target_directory"])
')" || META=""
if [ -z "$META" ]; then
    # cargo metadata fails while the workspace is mid-edit (e.g. a new member without
    # src/); fall back to Cargo.lock + the cargo registry source dir.
    log "cargo metadata failed; falling back to Cargo.lock"
    SYS_VER="$(python3 -c '
import sys, tomllib
lock = tomllib.load(open(sys.argv[1], "rb"))
v = [p["version"] for p in lock["package"] if p["name"] == "llama-cpp-sys-2"]
if len(v) != 1:
    sys.exit("expected exactly one llama-cpp-sys-2 in Cargo.lock, found %d" % len(v))
print(v[0])
' "$ROOT/Cargo.lock")"
    SYS_CANDIDATES=( "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-"$SYS_VER" )
    [ -d "${SYS_CANDIDATES[0]}" ] || { log "llama-cpp-sys-2 $SYS_VER source not found in the cargo registry"; exit 1; }
    META="${SYS_CANDIDATES[0]}
${CARGO_TARGET_DIR:-$ROOT/target}"
fi
SYS_DIR="$(sed -n 1p <<<"$META")"
CARGO_TARGET="$(sed -n 2p <<<"$META")"
SYS_VERSION="$(basename "$SYS_DIR" | sed 's/^llama-cpp-sys-2-//')"
LLAMA_SRC="$SYS_DIR/llama.cpp"
[ -f "$LLAMA_SRC/CMakeLists.txt" ] || { log "no llama.cpp under $SYS_DIR"; exit 1; }
log "crate llama.cpp: $LLAMA_SRC (llama-cpp-sys-2 $SYS_VERSION)"

# ---------------------------------------------------------------- 2. sdist (front-ends)
mkdir -p "$CACHE"
if [ ! -f "$CACHE/$SDIST_NAME" ]; then
    log "downloading llama-cpp-python==$PYPKG_VERSION sdist from PyPI"
    python3 -m pip download --no-deps --no-binary :all: \
        -d "$CACHE" "llama-cpp-python==$PYPKG_VERSION" >&2
fi
echo "$SDIST_SHA256  $CACHE/$SDIST_NAME" | sha256sum -c --quiet - >&2 \
    || { log "sha256 mismatch for $CACHE/$SDIST_NAME"; exit 1; }
SDIST_DIR="$CACHE/llama_cpp_python-${PYPKG_VERSION}"
if [ ! -d "$SDIST_DIR/vendor/llama.cpp/tools/tokenize" ]; then
    log "extracting $SDIST_NAME"
    rm -rf "$SDIST_DIR"
    tar -xzf "$CACHE/$SDIST_NAME" -C "$CACHE"
fi
FRONT="$SDIST_DIR/vendor/llama.cpp"

# ---------------------------------------------------------------- 3. skip check
# ---- mirror the crate's CMake configuration (see header)
CRATE_BUILD_TYPE="RelWithDebInfo"
CRATE_FLAGS=" -ffunction-sections -fdata-sections -fPIC -m64 -w"
CRATE_C_FLAGS="$CRATE_FLAGS"; CRATE_CXX_FLAGS="$CRATE_FLAGS"; CRATE_ASM_FLAGS="$CRATE_FLAGS"
CRATE_NATIVE=ON; CRATE_OPENMP=OFF; CRATE_SHARED=OFF
MIRROR_SRC="defaults (no cargo build of llama-cpp-sys-2 found)"
for f in $(ls -t "$CARGO_TARGET"/*/build/llama-cpp-sys-2-*/out/build/CMakeCache.txt 2>/dev/null); do
    if grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$LLAMA_SRC" "$f"; then
        cache_get() { grep -m1 "^$1:[A-Z]*=" "$f" | cut -d= -f2-; }
        CRATE_BUILD_TYPE="$(cache_get CMAKE_BUILD_TYPE)"
        CRATE_C_FLAGS="$(cache_get CMAKE_C_FLAGS)"
        CRATE_CXX_FLAGS="$(cache_get CMAKE_CXX_FLAGS)"
        CRATE_ASM_FLAGS="$(cache_get CMAKE_ASM_FLAGS)"
        CRATE_NATIVE="$(cache_get GGML_NATIVE)"
        CRATE_OPENMP="$(cache_get GGML_OPENMP)"
        CRATE_SHARED="$(cache_get BUILD_SHARED_LIBS)"
        MIRROR_SRC="$f"
        break
    fi
done
CRATE_BUILD_TYPE="${LLAMA_REF_BUILD_TYPE:-$CRATE_BUILD_TYPE}"
# llama-server is the engine a user would run instead of Minerva, so it is built as they
# get it, with OpenMP (llama.cpp's default), whatever Minerva's own build chose (Minerva
# runs without OpenMP so that its models can share the cores; see
# crates/minerva-engine/src/compute.rs). LLAMA_REF_OPENMP overrides either way.
if [ "$SERVER" = 1 ]; then CRATE_OPENMP=ON; fi
CRATE_OPENMP="${LLAMA_REF_OPENMP:-$CRATE_OPENMP}"
# For the same reason it gets llama.cpp's own compiler flags: the -mno-avx512fp16 that
# Minerva's .cargo/config.toml adds (it moves ggml's f16 attention helpers off a scalar
# path on AVX512-FP16 CPUs) is left out. LLAMA_REF_MINERVA_FLAGS=1 keeps it, in a work
# dir of its own, to measure how much of a difference is that flag.
if [ "$SERVER" = 1 ] && [ "$MINERVA_FLAGS" != 1 ]; then
    for v in CRATE_C_FLAGS CRATE_CXX_FLAGS CRATE_ASM_FLAGS; do
        flags="${!v}"; printf -v "$v" "%s" "${flags// -mno-avx512fp16/}"
    done
fi
log "mirroring crate build config from: $MIRROR_SRC"
log "  CMAKE_BUILD_TYPE=$CRATE_BUILD_TYPE GGML_NATIVE=$CRATE_NATIVE GGML_OPENMP=$CRATE_OPENMP BUILD_SHARED_LIBS=$CRATE_SHARED"
log "  CMAKE_C_FLAGS='$CRATE_C_FLAGS' CMAKE_CXX_FLAGS='$CRATE_CXX_FLAGS'"
CMAKE_ARGS=(
    -DCMAKE_BUILD_TYPE="$CRATE_BUILD_TYPE"
    -DCMAKE_C_FLAGS="$CRATE_C_FLAGS"
    -DCMAKE_CXX_FLAGS="$CRATE_CXX_FLAGS"
    -DCMAKE_ASM_FLAGS="$CRATE_ASM_FLAGS"
    -DBUILD_SHARED_LIBS="${CRATE_SHARED:-OFF}"
    -DGGML_NATIVE="${CRATE_NATIVE:-ON}"
    -DGGML_OPENMP="${CRATE_OPENMP:-ON}"
    -DLLAMA_CURL=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_COMMON=ON
    -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_EXAMPLES="$( [ "$SERVER" = 1 ] && echo OFF || echo ON )"
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_SERVER="$( [ "$SERVER" = 1 ] && echo ON || echo OFF )"
    -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_BUILD_COMMIT="llama-cpp-sys-2-$SYS_VERSION"
    -DLLAMA_BUILD_NUMBER=0
)
# llama-server: no web UI download either
[ "$SERVER" = 1 ] && CMAKE_ARGS+=(-DLLAMA_USE_PREBUILT_UI=OFF)
STAMP_TEXT="sys=$LLAMA_SRC
sdist=$SDIST_SHA256
overlay=${OVERLAY[*]}
targets=${TARGETS[*]}
cmake=${CMAKE_ARGS[*]}
cc=$(cc --version 2>/dev/null | head -1)"
STAMP="$BUILD/.minerva-reference-stamp"

up_to_date() {
    [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ] || return 1
    local t oldest=""
    for t in "${TARGETS[@]}"; do
        [ -x "$BIN/$t" ] || return 1
        if [ -z "$oldest" ] || [ "$BIN/$t" -ot "$oldest" ]; then oldest="$BIN/$t"; fi
    done
    # any library or front-end source newer than the oldest binary?
    if [ -n "$(find "$LLAMA_SRC" "${OVERLAY[@]/#/$FRONT/}" -type f -newer "$oldest" -print -quit)" ]; then
        return 1
    fi
    return 0
}

# key=value description of the build, read by make-llama-fixtures.sh
write_build_info() {
    {
        echo "llama_cpp_sys_2_version=$SYS_VERSION"
        echo "llama_cpp_src=$LLAMA_SRC"
        echo "frontends=llama-cpp-python $PYPKG_VERSION sdist (sha256 $SDIST_SHA256): ${OVERLAY[*]}"
        echo "mirrored_from=$MIRROR_SRC"
        echo "cmake_args=$(printf '%q ' "${CMAKE_ARGS[@]}" | sed 's/ $//')"
        echo "compiler=$(c++ --version | head -1)"
    } > "$BUILD/reference-build-info.txt"
}

if [ "${LLAMA_REF_FORCE:-0}" != 1 ] && up_to_date; then
    log "up to date, skipping build"
    write_build_info
    echo "$BIN"
    exit 0
fi

# ---------------------------------------------------------------- 4. assemble source tree
# A changed configuration (other crate version, other sdist, other CMake args) gets a
# clean tree and a clean build dir: copies keep upstream mtimes, which could be
# older than stale objects.
if [ "${LLAMA_REF_FORCE:-0}" = 1 ] || [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$STAMP_TEXT" ]; then
    log "clean source tree and build dir"
    rm -rf "$SRC" "$BUILD"
fi
mkdir -p "$SRC"
log "assembling $SRC"
# library: exactly the crate's files (cp -a keeps mtimes, so unchanged files do not rebuild)
mkdir -p "$SRC/tools" "$SRC/examples" "$SRC/scripts"
for d in "${LIBRARY[@]}"; do
    rm -rf "${SRC:?}/$d"
    cp -a "$LLAMA_SRC/$d" "$SRC/$d"
done
# front-ends: from the sdist
for d in "${OVERLAY[@]}"; do
    rm -rf "${SRC:?}/$d"
    cp -a "$FRONT/$d" "$SRC/$d"
done
# PATCH 1 (build plumbing only): the crate's tools/CMakeLists.txt adds every tool
# (server, mtmd, quantize, ...) whose sources are not shipped, and examples/ has no
# CMakeLists.txt at all. Replace both with lists of just the front-ends we build.
write_if_changed() { # path content
    if [ ! -f "$1" ] || [ "$(cat "$1")" != "$2" ]; then printf '%s\n' "$2" > "$1"; fi
}
write_if_changed "$SRC/tools/CMakeLists.txt" "# generated by scripts/reference/build-llama-cpp.sh
find_package(Threads REQUIRED)
llama_add_compile_flags()
$TOOLS_CMAKE"
write_if_changed "$SRC/examples/CMakeLists.txt" "# generated by scripts/reference/build-llama-cpp.sh
find_package(Threads REQUIRED)
llama_add_compile_flags()
add_subdirectory(simple)"
# PATCH 2 (llama-server only): the sdist's server opens its MCP config with
# common's fs_open_ifstream (a Windows-path helper), which the crate's common does not
# have yet; std::ifstream does the same on Linux.
if [ "$SERVER" = 1 ]; then
    sed -i 's/fs_open_ifstream(params.mcp_servers_config, std::ios::in)/std::ifstream(params.mcp_servers_config, std::ios::in)/' \
        "$SRC/tools/server/server-mcp.cpp"
fi

# ---------------------------------------------------------------- 5. configure + build
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    log "configuring"
    cmake -S "$SRC" -B "$BUILD" "${CMAKE_ARGS[@]}" >&2
fi
log "building ${TARGETS[*]} with -j $JOBS"
start=$(date +%s)
cmake --build "$BUILD" --config "$CRATE_BUILD_TYPE" -j "$JOBS" --target "${TARGETS[@]}" >&2
log "build took $(( $(date +%s) - start )) s"
for t in "${TARGETS[@]}"; do touch "$BIN/$t"; done
printf '%s' "$STAMP_TEXT" > "$STAMP"
write_build_info
echo "$BIN"
