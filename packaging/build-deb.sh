#!/usr/bin/env bash
# Build the odinws Debian package from this checkout.
#   packaging/build-deb.sh [OUTDIR]     (default: dist/deb)
# packaging/debian is not at the repository root, so this stages a source
# tree (the files the package is built from, as they are in the work tree)
# with packaging/debian as its debian/, and runs dpkg-buildpackage there.
# Needs: dh-virtualenv debhelper python3-venv python3-dev build-essential.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$repo/dist/deb}")

# The one version number (pyproject.toml reads it from there too).
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/odin_ws/__init__.py")
deb_version=$(dpkg-parsechangelog -l "$repo/packaging/debian/changelog" -S Version)
if [ "$version" != "$deb_version" ]; then
    echo "build-deb: odin_ws/__init__.py says $version but packaging/debian/changelog says" \
         "$deb_version; add a changelog entry (dch -v $version)" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/odinws-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
src=$work/odinws-$version
mkdir -p "$src"

# Tracked and new (not ignored) files of what the package is built from.
cd "$repo"
git ls-files -z --cached --others --exclude-standard -- \
        pyproject.toml setup.py LICENSE README.md requirements.lock \
        odin_ws twisted etc/odinws.yaml systemd docs |
    while IFS= read -r -d '' f; do
        if [ -f "$f" ]; then cp --parents -- "$f" "$src/"; fi
    done
cp -r packaging/debian "$src/debian"

cd "$src"
# Debian's python3, whatever python3 comes first on PATH (pyenv, a venv).
env PATH="/usr/sbin:/usr/bin:/sbin:/bin" dpkg-buildpackage -us -uc -b

mkdir -p "$out"
cp "$work"/odinws_"$version"_*.deb "$work"/odinws_"$version"_*.changes \
   "$work"/odinws_"$version"_*.buildinfo "$out/"
ls "$out"/odinws_"$version"_*.deb
