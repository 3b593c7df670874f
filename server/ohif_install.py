"""`./run.sh ohif-install`: fetch the pinned OHIF v3 viewer (npm package @ohif/app, its
prebuilt dist/) from the configured npm registry, check its sha512 against the pinned
integrity, and unpack it into `ohif_dir` re-based for /ohif/. Set-up time only: the server
never fetches anything at run time (docs/ohif.md).

The package is built for the site root ("/"): index.html names /app.bundle.js, /assets/…
and sets window.PUBLIC_URL="/", and the bundles load their chunks, workers and wasm from
`__webpack_require__.p = "/"`. Both are rewritten to "/ohif/" here, once, after the
integrity check (the rewrite is deterministic; the marker file records the version).
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@ohif/app"
VERSION = "3.13.2"
INTEGRITY = ("sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfp"
             "q+jd5xXZB9E8EA==")
BASE = "/ohif/"
MARKER = ".cloudfilm-ohif.json"


class InstallError(Exception):
    pass


def installed_version(dest: Path) -> str | None:
    try:
        return json.loads((dest / MARKER).read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def sri_sha512(path: Path) -> str:
    h = hashlib.sha512()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha512-" + base64.b64encode(h.digest()).decode()


def npm_pack(workdir: Path, npm: str = "npm") -> Path:
    """`npm pack @ohif/app@VERSION` from the registry npm is configured with."""
    try:
        out = subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--json",
                              "--pack-destination", str(workdir)],
                             cwd=workdir, check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise InstallError("npm not found: install Node.js (npm) first") from None
    except subprocess.CalledProcessError as e:
        raise InstallError(f"npm pack failed: {e.stderr.strip()[-500:]}") from None
    name = json.loads(out)[0]["filename"].replace("@", "").replace("/", "-")
    tgz = workdir / name
    if not tgz.exists():
        found = list(workdir.glob("*.tgz"))
        if len(found) != 1:
            raise InstallError("npm pack wrote no tarball")
        tgz = found[0]
    return tgz


def unpack_dist(tgz: Path, out: Path) -> None:
    """package/dist/** of the tarball into `out`; anything else, links and paths leaving
    `out` are skipped."""
    with tarfile.open(tgz, "r:gz") as tar:
        for m in tar.getmembers():
            if not m.name.startswith("package/dist/") or not (m.isfile() or m.isdir()):
                continue
            rel = Path(m.name[len("package/dist/"):])
            if not rel.parts or rel.is_absolute() or ".." in rel.parts:
                continue
            target = out / rel
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)


_ROOT_REF = re.compile(r'((?:href|src)=")/(?!/)')
_PUBLIC_URL = 'window.PUBLIC_URL="/"'
_CSS_ROOT_URL = re.compile(r'url\(/(?!/)')
_CHUNK_BASE = re.compile(r'(__webpack_require__\.p\s*=\s*)"/"')


def rebase(out: Path) -> int:
    """Point the root-built viewer at /ohif/; returns how many files changed."""
    index = out / "index.html"
    html = index.read_text(encoding="utf-8")
    if _PUBLIC_URL not in html:
        raise InstallError("index.html does not set window.PUBLIC_URL as expected")
    html = _ROOT_REF.sub(r"\1" + BASE, html).replace(_PUBLIC_URL, f'window.PUBLIC_URL="{BASE}"')
    index.write_text(html, encoding="utf-8")
    changed = 1
    for js in out.rglob("*.js"):
        text = js.read_text(encoding="utf-8", errors="surrogateescape")
        new = _CHUNK_BASE.sub(rf'\1"{BASE}"', text)
        if new != text:
            js.write_text(new, encoding="utf-8", errors="surrogateescape")
            changed += 1
    for css in out.rglob("*.css"):
        text = css.read_text(encoding="utf-8", errors="surrogateescape")
        new = _CSS_ROOT_URL.sub("url(" + BASE, text)
        if new != text:
            css.write_text(new, encoding="utf-8", errors="surrogateescape")
            changed += 1
    if changed < 2:
        raise InstallError("no bundle sets __webpack_require__.p: unexpected package layout")
    return changed


def install(dest: Path, *, force: bool = False, npm: str = "npm", log=print) -> bool:
    """Install the pinned viewer into `dest`; False when it is there already."""
    if not force and installed_version(dest) == VERSION and (dest / "index.html").exists():
        log(f"OHIF {VERSION} already installed in {dest}")
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".ohif-") as tmp:
        work = Path(tmp)
        log(f"fetching {PACKAGE}@{VERSION} with npm …")
        tgz = npm_pack(work, npm)
        got = sri_sha512(tgz)
        if got != INTEGRITY:
            raise InstallError(f"integrity mismatch for {PACKAGE}@{VERSION}: got {got}")
        staged = work / "dist"
        staged.mkdir()
        unpack_dist(tgz, staged)
        if not (staged / "index.html").exists():
            raise InstallError("the package has no dist/index.html")
        rebase(staged)
        (staged / MARKER).write_text(json.dumps({"package": PACKAGE, "version": VERSION,
                                                 "integrity": INTEGRITY}))
        old = work / "old"
        if dest.exists():
            dest.rename(old)
        staged.rename(dest)
    log(f"OHIF {VERSION} installed in {dest} (integrity {INTEGRITY[:20]}… checked)")
    return True
