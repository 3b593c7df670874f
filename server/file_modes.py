"""Files only the service account can read (issue 14 item 6).

Every process of CloudFilm runs with umask 077 (server/cli.py main, run.sh, the systemd unit's
UMask=0077), so what it creates is 0600/0700. Files made before that (or copied in by hand,
by a restore with cp, by another tool) are tightened at start: `tighten(config)` removes the
group and other bits (chmod go-rwx) from the var/ tree, the data folder, the server key and
its anchor file, and the SQLite database with its -wal/-shm files. Symbolic links are not
followed; entries owned by another account are left alone (chmod would be refused).
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from .config import ROOT

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077


def _tighten_one(path: str, st: os.stat_result | None = None) -> bool:
    try:
        st = st or os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid() or not st.st_mode & 0o077:
        return False
    try:
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)
        return True
    except OSError as exc:
        log.warning("cannot tighten the mode of %s: %s", path, exc)
        return False


def _tighten_tree(root: Path) -> int:
    if not root.exists() or root.is_symlink():
        return 0
    n = int(_tighten_one(str(root)))
    if not root.is_dir():
        return n
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            n += _tighten_one(os.path.join(dirpath, name))
    return n


def sqlite_files(database_url: str) -> list[Path]:
    if not database_url.startswith("sqlite:///"):
        return []
    p = Path(database_url[len("sqlite:///"):])
    p = p if p.is_absolute() else ROOT / p
    return [p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm"),
            p.with_name(p.name + "-journal")]


def private_paths(config) -> list[Path]:
    """What holds personal data or secrets: trees and single files."""
    key = config.path("secret_key_file")
    return [ROOT / "var", config.path("data_dir"), key, key.parent / "audit-anchor.log",
            *sqlite_files(config.database_url)]


def tighten(config) -> int:
    """chmod go-rwx on everything of private_paths(config). Returns how many entries
    changed (logged when any did)."""
    done: set = set()
    n = 0
    for p in private_paths(config):
        p = p.resolve() if p.exists() and not p.is_symlink() else p
        if p in done or any(d in p.parents for d in done):
            continue            # already walked (the data folder inside var/, …)
        done.add(p)
        n += _tighten_tree(p)
    if n:
        log.warning("file modes: removed group/other access from %d files and folders", n)
    return n
