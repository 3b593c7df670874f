"""The change marker (models/changes.py) and each process's watch of it (server/changes.py):
a change made through another node's process (here: the service called directly, as that
node's handler does, without touching this process's caches) is honoured by this process at
its next read of the marker, not when its caches run out; a lookup that was under way when
the caches were dropped does not put the old facts back. The same with real nodes:
tests/integration/test_two_nodes.py."""
from __future__ import annotations

import pytest

from models.db import database, write_transaction
from models.schema import Exam
from tests.dicom_factory import ct_bytes

pytestmark = pytest.mark.db

STUDY, SERIES, SOP = "1.2.826.0.1.3680043.8.498.1761", "1.2.826.0.1.3680043.8.498.1762", \
    "1.2.826.0.1.3680043.8.498.1763"


@pytest.fixture
def exam(catalog, tmp_path):
    from adapters.importer import Importer
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.dcm").write_bytes(ct_bytes(study_uid=STUDY, series_uid=SERIES,
                                                     sop_uid=SOP, size=16))
    assert Importer(catalog).run([tmp_path / "in"]).imported == 1
    return Exam.get(Exam.study_uid == STUDY)


@pytest.fixture
def watch(ctx):
    from server.changes import ChangeWatch
    w = ChangeWatch(ctx, 0.25)
    assert w.check() is False            # the first read learns the number
    return w


def share_session(ctx, exam):
    from models import shares
    new = shares.create_share(exam, key=ctx.secret_key, auditor=ctx.auditor)
    opened = shares.open_share(new.token, new.code, key=ctx.secret_key, auditor=ctx.auditor,
                               ip="10.0.0.7", ip_limit=0)
    return opened.session.token, opened.share.id


def test_every_access_change_moves_the_marker(ctx, exam):
    from models import shares
    from models.changes import generation
    from models.sessions import end_sessions
    g0 = generation()
    shares.set_images_enabled(exam, False, auditor=ctx.auditor, actor_id="desk")
    g1 = generation()
    token, sid = share_session(ctx, exam)
    assert generation() == g1            # opening a share grants: nothing to announce
    with write_transaction():
        assert end_sessions([token]) == 1
    g2 = generation()
    shares.revoke_share(sid, auditor=ctx.auditor, actor_kind="staff", actor_id="desk")
    assert g0 < g1 < g2 < generation()


def test_revoked_on_another_node_refused_here_at_the_next_read(ctx, exam, watch):
    from models import shares
    resolver = ctx.principals
    token, sid = share_session(ctx, exam)
    p = resolver.resolve(token, False)
    assert p is not None and p.share_id == sid
    assert resolver.cached(token) == (True, p)
    shares.revoke_share(sid, auditor=ctx.auditor, actor_kind="staff", actor_id="desk")
    assert resolver.cached(token) == (True, p)      # stale until this process learns it
    assert watch.check() is True
    assert resolver.cached(token) == (False, None)
    assert resolver.resolve(token, False) is None
    assert watch.check() is False                    # nothing new: nothing dropped


def test_images_switched_off_on_another_node_refused_here_at_the_next_read(ctx, exam, watch):
    from models import shares
    renders = ctx.renders
    with database.connection_context():
        renders.lookup_instance(STUDY, SERIES, SOP)
    assert renders.cached_exam_state(exam.id) == (exam.patient_id, True)
    shares.set_images_enabled(exam, False, auditor=ctx.auditor, actor_id="desk")
    assert renders.cached_exam_state(exam.id) == (exam.patient_id, True)
    assert watch.check() is True
    assert renders.cached_exam_state(exam.id) is None
    assert renders.exam_state(exam.id) == (exam.patient_id, False)


def test_a_lookup_under_way_during_a_change_does_not_put_old_facts_back(ctx, exam,
                                                                         monkeypatch):
    """The change lands while a request's lookup is between its query and its cache write:
    the lookup answers what it read (that request was already under way), but the cache
    keeps nothing, so the next request reads again."""
    import server.auth as auth
    from server import render_service
    token, _sid = share_session(ctx, exam)
    resolver, renders = ctx.principals, ctx.renders
    real_load = auth.load_session

    def load_then_change(*a, **kw):
        s = real_load(*a, **kw)
        resolver.clear()                 # the watch saw the marker move meanwhile
        return s
    monkeypatch.setattr(auth, "load_session", load_then_change)
    assert resolver.resolve(token, False) is not None
    assert resolver.cached(token) == (False, None)

    real_facts = render_service.catalog.exam_access_facts

    def facts_then_change(exam_id):
        row = real_facts(exam_id)
        renders.forget_access()
        return row
    monkeypatch.setattr(render_service.catalog, "exam_access_facts", facts_then_change)
    assert renders.exam_state(exam.id) == (exam.patient_id, True)
    assert renders.cached_exam_state(exam.id) is None


def test_settings_changed_on_another_node_apply_here_at_the_next_read(ctx, watch):
    from models.staff import Actor, store_settings
    from server import settings
    name = "render_max_px_visitor"
    before = getattr(ctx.config, name)
    settings.refresh(ctx)
    store_settings({settings.PREFIX + name: before // 2}, actor=Actor("staff", "admin1"),
                   auditor=ctx.auditor, area="settings")
    assert watch.check() is True
    assert getattr(ctx.config, name) == before // 2


def test_unreadable_marker_drops_the_caches_when_it_answers_again(ctx, exam, watch,
                                                                  monkeypatch):
    import models.changes as changes
    token, _sid = share_session(ctx, exam)
    ctx.principals.resolve(token, False)
    real = changes.generation

    def down():
        raise ConnectionError("database away")
    monkeypatch.setattr(changes, "generation", down)
    assert watch.check() is False
    assert ctx.principals.cached(token)[0] is True   # nothing known: caches run out alone
    monkeypatch.setattr(changes, "generation", real)
    assert watch.check() is True                     # changes may have been missed
    assert ctx.principals.cached(token) == (False, None)


def test_a_view_is_claimed_once(ctx):
    import datetime as dt

    from models.view_seen import ViewSeen, first_view, prune, view_key
    key = view_key("share", "7", 12, "series.view", SERIES)
    with write_transaction():
        assert first_view(key) is True
    with write_transaction():
        assert first_view(key) is False
    assert first_view(view_key("share", "7", 13, "series.view", SERIES)) is True
    later = ViewSeen.get_by_id(key).seen_at + dt.timedelta(days=3)
    assert prune(later) == 2
    assert first_view(key, later) is True
