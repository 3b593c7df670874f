#!/usr/bin/env bash
# CloudFilm 云胶片: `./run.sh` installs, prepares the database and demo data, and serves;
# `./run.sh test` runs the whole test suite. Other commands: ./run.sh --help
set -euo pipefail
# the database, the server key, stored and derived files, backups: the service account's only
umask 077
cd "$(dirname "$(readlink -f "$0")")"

find_python() {
  for py in "${PYTHON:-}" python3.11 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$py"; return 0
    fi
  done
  echo "CloudFilm needs Python 3.11 or newer (python3.11 was not found)" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  PY=$(find_python)
  echo "creating .venv with $PY …" >&2
  "$PY" -m venv .venv
fi
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat .venv/.requirements.sha256 2>/dev/null || true)" != "$want" ]; then
  echo "installing Python packages into .venv …" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt >&2
  echo "$want" > .venv/.requirements.sha256
fi

# numpy-heavy paths run 2-8x faster when glibc keeps large buffers (performance-notes.md)
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-67108864}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-268435456}
export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$PWD/var/numba-cache}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

case "${1:-serve}" in
  test)
    shift
    exec .venv/bin/python -m pytest -q "$@"
    ;;
  *)
    exec .venv/bin/python -m server.cli "$@"
    ;;
esac
