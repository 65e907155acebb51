#!/usr/bin/env bash
# Build a PLUMED kernel with the DRR (eABF), PYTORCH and OPES modules, linked
# against the libtorch of the installed `torch`, for cvflow's `plumed` engine.
#
#   scripts/install-plumed.sh [--source DIR|TARBALL] [--prefix DIR] [--jobs N]
#
# Without --source, the PLUMED 2 tree is taken from the sdist of the PyPI
# package `hillclimber` (external/plumed2), fetched through pip's index.
# The build is cached under --prefix, keyed on what decides the binary: the PLUMED
# source, torch's version and C++ ABI, the compiler and the configure flags, and not
# on where torch is installed. A fresh clone with a new venv therefore reuses the
# kernel: it finds libtorch through the link <prefix>/libtorch, which each run points
# at the current venv's torch/lib (same version and ABI, so the same libraries).
# At the end it prints the line to export:  PLUMED_KERNEL=<prefix>/lib/libplumedKernel.so
set -euo pipefail

PY=${PYTHON:-python}
SOURCE=""
PREFIX="${XDG_DATA_HOME:-$HOME/.local/share}/cvflow/plumed"
JOBS=$(nproc 2>/dev/null || echo 2)
HILLCLIMBER_VERSION=0.1.8
HILLCLIMBER_SHA256=795022caa8954149877bcb812a1ec14eb013c67a92abf0d318c2a603dc0b5f22

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --source) SOURCE=$(realpath "$2"); shift 2 ;;
    --prefix) PREFIX="$2"; shift 2 ;;
    --jobs|-j) JOBS="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install-plumed: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
mkdir -p "$PREFIX"
PREFIX=$(realpath "$PREFIX")

die() { echo "install-plumed: error: $*" >&2; exit 1; }

TORCH_DIR=$("$PY" -c 'import os, torch; print(os.path.dirname(torch.__file__))') \
  || die "cannot import torch with '$PY' (set PYTHON=/path/to/venv/bin/python)"
TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)')
CXX11_ABI=$("$PY" -c 'import torch; print(int(torch.compiled_with_cxx11_abi()))')

FLAGS="--enable-modules=drr+pytorch+opes --enable-libtorch --enable-boost_serialization --disable-external-blas --disable-external-lapack --disable-doc"
CPPFLAGS_T="-I$TORCH_DIR/include -I$TORCH_DIR/include/torch/csrc/api/include -D_GLIBCXX_USE_CXX11_ABI=$CXX11_ABI"
# the kernel's run path goes through a link that each run re-points (see the top)
LIBTORCH_LINK="$PREFIX/libtorch"
ln -sfn "$TORCH_DIR/lib" "$LIBTORCH_LINK"
LDFLAGS_T="-L$TORCH_DIR/lib -Wl,-rpath,$LIBTORCH_LINK -Wl,-rpath,$PREFIX/lib"
CXX_ID=$("${CXX:-c++}" --version 2>/dev/null | head -1 || echo unknown)

# --- boost serialization (DRR needs it) ---------------------------------------
if [ ! -e /usr/include/boost/serialization/vector.hpp ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "install-plumed: installing libboost-serialization-dev"
    apt-get install -y -q libboost-serialization-dev >/dev/null
  else
    die "boost serialization headers not found; install Debian's libboost-serialization-dev (or your distribution's equivalent)"
  fi
fi

# --- source ---------------------------------------------------------------------
WORK="$PREFIX/.build"
mkdir -p "$WORK"
if [ -z "$SOURCE" ]; then
  SDIST="$WORK/hillclimber-$HILLCLIMBER_VERSION.tar.gz"
  if [ ! -f "$SDIST" ]; then
    echo "install-plumed: fetching the hillclimber $HILLCLIMBER_VERSION sdist (PLUMED 2 source)"
    # pip itself would build the sdist's metadata (minutes); read pip's index directly instead.
    "$PY" - "$SDIST" "$HILLCLIMBER_VERSION" <<'EOF'
import json, sys, urllib.request
from pip._internal.models.index import PyPI
out, version = sys.argv[1], sys.argv[2]
name = f"hillclimber-{version}.tar.gz"
req = urllib.request.Request(PyPI.simple_url.rstrip("/") + "/hillclimber/",
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req, timeout=120))["files"]
url = next(f["url"] for f in files if f["filename"] == name)
urllib.request.urlretrieve(url, out + ".part")
EOF
    mv "$SDIST.part" "$SDIST"
  fi
  echo "$HILLCLIMBER_SHA256  $SDIST" | sha256sum -c --quiet - || die "checksum mismatch for $SDIST"
  SOURCE_ID="hillclimber-$HILLCLIMBER_VERSION:$HILLCLIMBER_SHA256"
  SRC_KIND=sdist
elif [ -f "$SOURCE" ]; then
  SOURCE_ID="tarball:$(sha256sum "$SOURCE" | cut -d' ' -f1)"
  SRC_KIND=tarball
elif [ -d "$SOURCE" ]; then
  [ -x "$SOURCE/configure" ] || die "$SOURCE does not look like a PLUMED tree (no ./configure)"
  SOURCE_ID="tree:$SOURCE:$( (cd "$SOURCE" && git rev-parse HEAD 2>/dev/null) || cat "$SOURCE/VERSION.txt" | tail -1)"
  SRC_KIND=tree
else
  die "--source $SOURCE: no such file or directory"
fi

KEY=$(printf '%s\n' "key-v2" "$SOURCE_ID" "$TORCH_VERSION" "$CXX11_ABI" "$CXX_ID" "$FLAGS" | sha256sum | cut -d' ' -f1)
KERNEL="$PREFIX/lib/libplumedKernel.so"
if [ -f "$PREFIX/.cvflow-build-key" ] && [ "$(cat "$PREFIX/.cvflow-build-key")" = "$KEY" ] && [ -f "$KERNEL" ]; then
  echo "install-plumed: up to date (source, torch $TORCH_VERSION, ABI, compiler and flags unchanged; libtorch from $TORCH_DIR/lib)"
  echo "export PLUMED_KERNEL=$KERNEL"
  exit 0
fi

rm -rf "$WORK/src"
mkdir -p "$WORK/src"
case "$SRC_KIND" in
  sdist)   tar xzf "$SDIST" -C "$WORK/src" "hillclimber-$HILLCLIMBER_VERSION/external/plumed2"
           SRC="$WORK/src/hillclimber-$HILLCLIMBER_VERSION/external/plumed2" ;;
  tarball) tar xf "$SOURCE" -C "$WORK/src"
           SRC=$(dirname "$(find "$WORK/src" -maxdepth 3 -name configure -type f | head -1)") ;;
  tree)    cp -a "$SOURCE" "$WORK/src/plumed2"; SRC="$WORK/src/plumed2" ;;
esac

echo "install-plumed: building PLUMED ($(tail -1 "$SRC/VERSION.txt")) against torch $TORCH_VERSION into $PREFIX with $JOBS jobs"
echo "install-plumed: this takes 20-25 minutes on 2 cores; log: $WORK/build.log"
cd "$SRC"
# shellcheck disable=SC2086
./configure --prefix="$PREFIX" $FLAGS CPPFLAGS="$CPPFLAGS_T" LDFLAGS="$LDFLAGS_T" >"$WORK/build.log" 2>&1 \
  || die "configure failed; see $WORK/build.log"
grep -q "__PLUMED_HAS_LIBTORCH" Makefile.conf || die "configure did not find libtorch in $TORCH_DIR; see $WORK/build.log"
make -j "$JOBS" >>"$WORK/build.log" 2>&1 || die "make failed; see $WORK/build.log"
make install >>"$WORK/build.log" 2>&1 || die "make install failed; see $WORK/build.log"
echo "$KEY" >"$PREFIX/.cvflow-build-key"
rm -rf "$WORK/src"
echo "install-plumed: done"
echo "export PLUMED_KERNEL=$KERNEL"
