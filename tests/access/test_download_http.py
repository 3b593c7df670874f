"""The ZIP download as Tornado's StaticFileHandler serves a file: HEAD, ETag and If-None-Match
(304), Range (206, 416, suffix, capped end, an unusable header ignored), If-Range, the
download log written only when bytes go out; and the one download log JSON served at
/api/downloads and /api/admin/downloads."""
import io
import zipfile

import pytest
import requests

from models.schema import DownloadLog
from tests.access.conftest import staff

pytestmark = pytest.mark.db


def _url(live, a, scope="exam"):
    base = f"{live.url}/api/download/studies/{a.study_uid}"
    return {"exam": f"{base}.zip", "series": f"{base}/series/{a.series_uid}.zip",
            "image": f"{base}/series/{a.series_uid}/instances/{a.sop_uids[0]}.zip"}[scope]


def _rows():
    """The log rows, once the last one is finished: the client has every byte before the
    server records how many it sent."""
    import time
    for _ in range(50):
        rows = list(DownloadLog.select().order_by(DownloadLog.id))
        if not rows or rows[-1].bytes_sent:
            break
        time.sleep(0.05)
    return rows


def test_head_etag_304_and_the_log(live, people):
    a, _ = people
    doc = staff(live, ("doctor",), "dl1")
    url = _url(live, a)
    head = requests.head(url, headers=doc)
    assert head.status_code == 200 and head.content == b""
    size, etag = int(head.headers["Content-Length"]), head.headers["ETag"]
    assert head.headers["Content-Type"] == "application/zip"
    assert head.headers["Accept-Ranges"] == "bytes"
    assert head.headers["Content-Disposition"] == \
        f'attachment; filename="{a.accession}.zip"; filename*=UTF-8\'\'{a.accession}.zip'
    assert head.headers["Cache-Control"] == "private, no-store"
    assert "Last-Modified" not in head.headers and "Expires" not in head.headers
    assert _rows() == []                                       # HEAD sends no file bytes
    full = requests.get(url, headers=doc)
    assert full.status_code == 200 and len(full.content) == size
    assert full.headers["ETag"] == etag
    assert zipfile.ZipFile(io.BytesIO(full.content)).testzip() is None
    (row,) = _rows()
    assert row.completed and row.bytes_sent == row.bytes_total == size and row.scope == "exam"
    for match in (etag, "W/" + etag, f'"other", {etag}', "*"):
        r = requests.get(url, headers={**doc, "If-None-Match": match})
        assert r.status_code == 304 and r.content == b"", match
    assert len(_rows()) == 1                                   # a 304 is no download
    r = requests.get(url, headers={**doc, "If-None-Match": '"other"'})
    assert r.status_code == 200 and r.content == full.content
    r = requests.get(url, headers={**doc, "If-Modified-Since": "Sat, 01 Jan 2100 00:00:00 GMT"})
    assert r.status_code == 200 and r.content == full.content   # the ETag decides, not dates
    assert len(_rows()) == 3
    for scope, suffix in (("series", "_series"), ("image", "_image")):
        r = requests.head(_url(live, a, scope), headers=doc)
        # the exam has one series: its archive has the same bytes, so the same ETag
        assert r.status_code == 200 and (r.headers["ETag"] == etag) == (scope == "series")
        assert f'filename="{a.accession}{suffix}.zip"' in r.headers["Content-Disposition"]


def test_ranges(live, people):
    a, _ = people
    doc = staff(live, ("doctor",), "dl2")
    url = _url(live, a)
    full = requests.get(url, headers=doc).content
    n = len(full)
    cases = [("bytes=100-199", 206, full[100:200], f"bytes 100-199/{n}"),
             ("bytes=-22", 206, full[-22:], f"bytes {n - 22}-{n - 1}/{n}"),
             (f"bytes={n - 50}-{n + 5000}", 206, full[-50:], f"bytes {n - 50}-{n - 1}/{n}"),
             ("bytes=0-", 200, full, None),                  # the whole file: a plain 200
             ("bytes=junk", 200, full, None),                # unusable header: ignored
             ("items=0-5", 200, full, None)]
    for header, status, body, crange in cases:
        r = requests.get(url, headers={**doc, "Range": header})
        assert (r.status_code, r.content) == (status, body), header
        assert r.headers.get("Content-Range") == crange, header
        assert int(r.headers["Content-Length"]) == len(body), header
    before = len(_rows())
    for header in (f"bytes={n}-", f"bytes={n + 10}-{n + 20}", "bytes=50-10", "bytes=-0"):
        r = requests.get(url, headers={**doc, "Range": header})
        assert r.status_code == 416, header
        assert r.headers["Content-Range"] == f"bytes */{n}", header
        assert r.json()["status"] == 416 and "range" in r.json()["error"]
        r = requests.head(url, headers={**doc, "Range": header})
        assert r.status_code == 416 and r.content == b"", header
    assert len(_rows()) == before                              # a 416 is no download
    r = requests.head(url, headers={**doc, "Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == b"" and r.headers["Content-Length"] == "10"
    # the log: what was asked for and what went out; complete only up to the last byte
    requests.get(url, headers={**doc, "Range": "bytes=100-199"})
    assert (_rows()[-1].bytes_total, _rows()[-1].bytes_sent) == (n, 100)
    assert not _rows()[-1].completed
    requests.get(url, headers={**doc, "Range": f"bytes={n - 50}-"})
    assert _rows()[-1].bytes_sent == 50 and _rows()[-1].completed


def test_resumed_range_with_cold_caches_gives_identical_bytes(live, people):
    """A resumed download in a fresh process: the CRCs of the files it skips are computed
    (off the event loop) before streaming; the bytes equal the first attempt's."""
    from adapters import dicom_zip
    a, _ = people
    doc = staff(live, ("doctor",), "dl3")
    url = _url(live, a)
    full = requests.get(url, headers=doc).content
    etag = requests.head(url, headers=doc).headers["ETag"]
    for cut in (len(full) // 2 + 3, len(full) - 30, 7):
        dicom_zip._crc_cache.clear()
        dicom_zip._layouts.clear()
        r = requests.get(url, headers={**doc, "Range": f"bytes={cut}-", "If-Range": etag})
        assert r.status_code == 206 and full[:cut] + r.content == full, cut


def test_one_download_log_at_both_urls(live, people):
    import datetime as dt
    a, b = people
    doc = staff(live, ("doctor",), "dl4")
    for p in (a, a, b):
        assert requests.get(_url(live, p), headers=doc).status_code == 200
    aud, desk = staff(live, ("auditadmin",), "aud4"), staff(live, ("frontdesk",), "desk4")
    answers = []
    for path in ("/api/downloads", "/api/admin/downloads"):
        for who in (aud, desk):
            r = requests.get(f"{live.url}{path}?study_uid={a.study_uid}", headers=who)
            assert r.status_code == 200, (path, r.text)
            answers.append(r.json())
        assert requests.get(live.url + path, headers=doc).status_code == 403
        assert requests.get(live.url + path).status_code == 401
    assert all(x == answers[0] for x in answers)               # one handler, one shape
    out = answers[0]
    assert out["ok"] and out["total"] == 2 and len(out["downloads"]) == 2
    row = out["downloads"][0]
    assert set(row) == {"id", "time", "study_uid", "accession_number", "scope", "object_uid",
                        "actor_kind", "actor_id", "ip", "user_agent", "bytes_total",
                        "bytes_sent", "completed"}
    assert row["study_uid"] == a.study_uid and row["actor_id"] == "dl4"
    assert row["completed"] is True and row["time"].endswith("Z")

    def log(query):
        r = requests.get(f"{live.url}/api/admin/downloads?{query}", headers=aud)
        return r.status_code, r.json()
    assert log("")[1]["total"] == 3
    st, one = log("limit=1")
    assert st == 200 and one["total"] == 3 and len(one["downloads"]) == 1
    today = dt.datetime.utcnow().date()
    assert log(f"since={today}&until={today}")[1]["total"] == 3
    assert log(f"since={today + dt.timedelta(days=1)}")[1]["total"] == 0
    assert log(f"until={today - dt.timedelta(days=1)}")[1]["total"] == 0
    hour_ago = (dt.datetime.utcnow() - dt.timedelta(hours=1)).isoformat() + "Z"
    assert log(f"since={hour_ago}&study_uid={b.study_uid}")[1]["total"] == 1
    for bad in ("since=yesterday", "until=2024-13-40", "study_uid=x.y", "limit=0"):
        assert log(bad)[0] == 400, bad


def test_a_chinese_accession_number_names_the_file():
    """A HIS that numbers exams 超声2026-001 still gives a download (was a 500: the header
    could not be encoded), named in full for browsers that read RFC 6266 filename*."""
    from urllib.parse import unquote
    from server.handlers.download import content_disposition
    header = content_disposition('超声2026-001;"x".zip')
    header.encode("latin-1")
    plain, star = header.split("; filename*=UTF-8''")
    assert plain == 'attachment; filename="__2026-001__x_.zip"'
    assert unquote(star) == '超声2026-001;"x".zip'
