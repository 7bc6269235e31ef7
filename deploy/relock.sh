#!/bin/sh
# Regenerate the image's dependency locks, with the hash of every published file:
#   requirements.lock        the runtime dependencies of pyproject.toml, and theirs
#   requirements-build.lock  the build backend of pyproject.toml ([build-system] requires)
# The target is the image's interpreter (CPython 3.11, Linux, glibc), named explicitly, so the
# result does not depend on the machine running this; the aarch64 resolution is checked to
# give the same pins. Existing pins are kept while they satisfy pyproject.toml: pass --upgrade
# (or --upgrade-package NAME) to move them.
# uv is used for its explicit --python-platform target; it is installed, at a pinned version,
# into a throwaway virtualenv outside the work tree.
#   deploy/relock.sh [--upgrade]
set -eu
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
TOOL="${TMPDIR:-/tmp}/trailkeeper-uv-$UV_VERSION"
if [ ! -x "$TOOL/bin/uv" ]; then
  python3 -m venv "$TOOL"
  "$TOOL/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
UV="$TOOL/bin/uv"
# Resolve from the public index only: a local find-links directory must not shape the lock.
unset PIP_FIND_LINKS UV_FIND_LINKS UV_INDEX_URL UV_EXTRA_INDEX_URL
common="--quiet --generate-hashes --python-version 3.11 --custom-compile-command deploy/relock.sh"

"$UV" pip compile pyproject.toml $common --python-platform x86_64-manylinux_2_28 \
  -o requirements.lock "$@"
python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
  > "$TOOL/build.in"
"$UV" pip compile "$TOOL/build.in" $common --python-platform x86_64-manylinux_2_28 \
  --no-annotate -o requirements-build.lock "$@"

# The aarch64 image must get the same versions (the locks hold every file's hash, both arches').
# It starts from the x86_64 lock, so the pins kept there are kept here too and only a real
# platform difference shows.
cp requirements.lock "$TOOL/aarch64.lock"
"$UV" pip compile pyproject.toml $common --python-platform aarch64-manylinux_2_28 \
  -o "$TOOL/aarch64.lock" "$@"
pins() { grep -E '^[A-Za-z0-9]' "$1"; }
pins requirements.lock >"$TOOL/x86_64.pins"
pins "$TOOL/aarch64.lock" >"$TOOL/aarch64.pins"
if ! diff "$TOOL/x86_64.pins" "$TOOL/aarch64.pins"; then
  echo "relock: the aarch64 resolution differs from x86_64 (above); pin the difference in pyproject.toml" >&2
  exit 1
fi
echo "wrote requirements.lock and requirements-build.lock"
