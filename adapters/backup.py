"""Backup and restore: a consistent database copy, the stored files with SHA-256 checksums,
and the secret key, in one folder.

Layout of a backup folder:
    manifest.json     what is inside: database kind, every file with size and SHA-256
    database.sqlite   SQLite: a page-consistent copy made with SQLite's online backup API
    database.sql      MySQL/MariaDB: mysqldump --single-transaction (one consistent
                      REPEATABLE READ snapshot, the server keeps running), with triggers
    files/…           the data folder (originals, report PDFs, quarantine); derived fast-decode
                      copies are left out (they are made again on demand)
    secret.key        the server key (keys national-ID hashes, the audit chain and TOTP
                      secrets): without it a restored database cannot be used. Mode 0600;
                      keep backups as safe as the server itself.

The database is copied first, then the files: files are only ever added (never changed),
so every file the copied database names is in the backup. `restore` checks every checksum
before it changes anything.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess  # nosec B404 - mysqldump/mariadb with fixed argument lists
from pathlib import Path
from urllib.parse import unquote, urlparse

log = logging.getLogger(__name__)

FORMAT = 1
SKIP_TOP = {"derived"}
TMP_PREFIX = ".tmp-"


class BackupError(Exception):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sqlite_path(url: str, root: Path) -> Path:
    p = Path(url[len("sqlite:///"):])
    return p if p.is_absolute() else root / p


def _mysql_args(url: str) -> tuple[list[str], dict, str]:
    p = urlparse(url)
    name = p.path.lstrip("/")
    if not name.replace("_", "").isalnum():
        raise BackupError(f"database name {name!r}: letters, digits and _ only")
    args = [f"--host={p.hostname or '127.0.0.1'}", f"--port={p.port or 3306}",
            f"--user={unquote(p.username or 'root')}"]
    env = dict(os.environ, MYSQL_PWD=unquote(p.password or ""))
    return args, env, name


def _tool(*names: str) -> str:
    for n in names:
        found = shutil.which(n)
        if found:
            return found
    raise BackupError(f"{names[0]} is not installed (apt-get install mariadb-client)")


# backup --------------------------------------------------------------------------------------
def backup_database(url: str, dest: Path, root: Path) -> dict:
    if url.startswith("sqlite:///"):
        src_path = _sqlite_path(url, root)
        if not src_path.exists():
            raise BackupError(f"database file {src_path} does not exist")
        target = dest / "database.sqlite"
        src = sqlite3.connect(str(src_path), timeout=30)
        dst = sqlite3.connect(str(target))
        try:
            src.backup(dst, pages=1024)          # consistent even while the server writes
        finally:
            dst.close()
            src.close()
        return {"kind": "sqlite", "file": target.name, "sha256": _sha256(target)}
    if url.startswith("mysql://"):
        args, env, name = _mysql_args(url)
        target = dest / "database.sql"
        dump = _tool("mariadb-dump", "mysqldump")
        with open(target, "wb") as out:
            r = subprocess.run(  # nosec B603 - fixed argv, no shell
                [dump, *args, "--single-transaction", "--quick", "--routines", "--triggers",
                 "--hex-blob", "--default-character-set=utf8mb4", "--skip-lock-tables",
                 "--no-tablespaces", name], stdout=out, stderr=subprocess.PIPE, env=env,
                timeout=24 * 3600)
        if r.returncode != 0:
            raise BackupError("mysqldump failed: " + r.stderr.decode(errors="replace")[-400:])
        return {"kind": "mysql", "file": target.name, "sha256": _sha256(target)}
    raise BackupError("unsupported database URL")


def backup(dest: Path, *, database_url: str, data_dir: Path, secret_key_file: Path,
           root: Path) -> dict:
    """Write a backup into dest (which must not exist or be empty). Returns the manifest."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty: give a new folder for each backup")
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    manifest: dict = {"format": FORMAT, "created_at": dt.datetime.now().isoformat(
        timespec="seconds"), "database": backup_database(database_url, dest, root),
        "files": []}
    files_dir = dest / "files"
    data_dir = Path(data_dir)
    if data_dir.exists():
        for dirpath, dirs, names in os.walk(data_dir):
            rel_dir = Path(dirpath).relative_to(data_dir)
            if rel_dir == Path("."):
                dirs[:] = [d for d in dirs if d not in SKIP_TOP]
            dirs.sort()
            for n in sorted(names):
                if n.startswith(TMP_PREFIX):
                    continue
                src = Path(dirpath) / n
                rel = (rel_dir / n).as_posix()
                target = files_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256()
                with open(src, "rb") as fi, open(target, "wb") as fo:
                    for block in iter(lambda: fi.read(1 << 20), b""):
                        h.update(block)
                        fo.write(block)
                manifest["files"].append({"path": rel, "size": target.stat().st_size,
                                          "sha256": h.hexdigest()})
    key = Path(secret_key_file)
    if key.exists():
        fd = os.open(dest / "secret.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.read_bytes())
        manifest["secret_key"] = {"file": "secret.key", "sha256": _sha256(dest / "secret.key")}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    log.info("backup written to %s: %d files", dest, len(manifest["files"]))
    return manifest


# restore -------------------------------------------------------------------------------------
def verify_backup(src: Path) -> dict:
    """Check the manifest and every checksum; raise BackupError naming the first problem."""
    src = Path(src)
    try:
        manifest = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupError(f"{src}/manifest.json unreadable: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"unknown backup format {manifest.get('format')!r}")
    db = manifest["database"]
    if _sha256(src / db["file"]) != db["sha256"]:
        raise BackupError(f"{db['file']}: checksum mismatch (backup damaged)")
    for f in manifest["files"]:
        rel = Path(f["path"])
        if rel.is_absolute() or ".." in rel.parts:
            raise BackupError(f"unsafe path in the manifest: {f['path']!r}")
        p = src / "files" / rel
        if not p.is_file() or _sha256(p) != f["sha256"]:
            raise BackupError(f"files/{f['path']}: missing or checksum mismatch (backup "
                              "damaged)")
    if "secret_key" in manifest and \
            _sha256(src / "secret.key") != manifest["secret_key"]["sha256"]:
        raise BackupError("secret.key: checksum mismatch (backup damaged)")
    return manifest


def _database_empty(url: str, root: Path) -> bool:
    if url.startswith("sqlite:///"):
        p = _sqlite_path(url, root)
        return not p.exists() or p.stat().st_size == 0
    import pymysql
    args, env, name = _mysql_args(url)
    p = urlparse(url)
    conn = pymysql.connect(host=p.hostname or "127.0.0.1", port=p.port or 3306,
                           user=unquote(p.username or "root"),
                           password=unquote(p.password or ""), connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema=%s",
                        (name,))
            return cur.fetchone()[0] == 0
    finally:
        conn.close()


def restore_database(manifest: dict, src: Path, url: str, root: Path) -> None:
    db = manifest["database"]
    if db["kind"] == "sqlite":
        if not url.startswith("sqlite:///"):
            raise BackupError("this backup holds a SQLite database but database_url is MySQL")
        target = _sqlite_path(url, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".restore-tmp")
        shutil.copyfile(src / db["file"], tmp)
        for suffix in ("-wal", "-shm"):
            try:
                os.unlink(str(target) + suffix)
            except FileNotFoundError:
                pass
        os.replace(tmp, target)
        return
    if not url.startswith("mysql://"):
        raise BackupError("this backup holds a MySQL database but database_url is SQLite")
    args, env, name = _mysql_args(url)
    client = _tool("mariadb", "mysql")
    r = subprocess.run(  # nosec B603 - fixed argv, no shell
        [client, *args, "-e", f"DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}` "
         "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"],
        capture_output=True, env=env, timeout=600)
    if r.returncode != 0:
        raise BackupError("cannot recreate the database: "
                          + r.stderr.decode(errors="replace")[-400:])
    with open(src / db["file"], "rb") as fh:
        r = subprocess.run([client, *args, "--default-character-set=utf8mb4", name],  # nosec B603
                           stdin=fh, capture_output=True, env=env, timeout=24 * 3600)
    if r.returncode != 0:
        raise BackupError("loading the dump failed: " + r.stderr.decode(errors="replace")[-400:])


def restore(src: Path, *, database_url: str, data_dir: Path, secret_key_file: Path, root: Path,
            force: bool = False) -> dict:
    """Restore a backup made by `backup`. Stop the server first. Refuses to overwrite a
    database or data folder that holds data unless force."""
    src = Path(src)
    manifest = verify_backup(src)
    data_dir = Path(data_dir)
    has_files = data_dir.exists() and any(
        p.is_file() for sub in ("dicom", "reports") if (data_dir / sub).exists()
        for p in (data_dir / sub).rglob("*"))
    if not force and (has_files or not _database_empty(database_url, root)):
        raise BackupError("the database or the data folder is not empty; stop the server and "
                          "run restore with --force to replace them")
    key = Path(secret_key_file)
    if "secret_key" in manifest:
        backup_key = (src / "secret.key").read_bytes()
        if key.exists() and key.read_bytes() != backup_key and not force:
            raise BackupError(f"{key} differs from the backup's key; --force replaces it")
    restore_database(manifest, src, database_url, root)
    for sub in ("dicom", "reports", "quarantine", "derived"):
        shutil.rmtree(data_dir / sub, ignore_errors=True)
    for f in manifest["files"]:
        target = data_dir / f["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "files" / f["path"], target)
        if _sha256(target) != f["sha256"]:
            raise BackupError(f"{target}: written copy does not match its checksum")
    if "secret_key" in manifest:
        key.parent.mkdir(parents=True, exist_ok=True)
        tmp = key.with_name(key.name + ".restore-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write((src / "secret.key").read_bytes())
        os.replace(tmp, key)
    log.info("restored %s: database and %d files", src, len(manifest["files"]))
    return manifest
