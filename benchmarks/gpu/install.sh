#!/usr/bin/env bash
# On the offline GPU host: install a wheelhouse (ray, verl, optionally vllm) without an index,
# into /tmp/site, and make `bridge-ray` runnable from this checkout. Prints the export line.
#
#   eval "$(bash benchmarks/gpu/install.sh SRC)"   SRC: a wheelhouse.tar.xz, or a folder holding
#                                                  all wheelhouse.tar.xz.partNN pieces + SHA256SUMS
set -euo pipefail
src="$1"; site=/tmp/site; repo="$(cd "$(dirname "$0")/../.." && pwd)"
if [ -d "$src" ]; then
  (cd "$src" && sha256sum -c --quiet SHA256SUMS) >&2
  cat "$src"/wheelhouse.tar.xz.part* > /tmp/wheelhouse.tar.xz
  src=/tmp/wheelhouse.tar.xz
fi
rm -rf /tmp/wh && mkdir -p /tmp/wh
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$src" /tmp/wh
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" /tmp/wh/wheels/*.whl >&2
printf '#!/bin/sh\nexec python3 -m bridge_ray "$@"\n' > "$site/bin/bridge-ray" && chmod +x "$site/bin/bridge-ray"
echo "installed $(ls /tmp/wh/wheels | wc -l) wheels into $site" >&2
echo "export PYTHONPATH=$site:$repo\${PYTHONPATH:+:\$PYTHONPATH} PATH=$site/bin:\$PATH"
