"""Command line: `./run.sh [serve]`, `./run.sh import PATH…`, `./run.sh install-service`, …"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .config import ROOT, ConfigError, load_config, settings_markdown

log = logging.getLogger("cloudfilm")

DEMO_MARKER = "demo-loaded"
# Modules of server/ with `async start_background(ctx, primary: bool)`, started by serve
# (every one is required: an import error stops start-up). Listeners that bind a port run in
# the primary process of each machine; singleton jobs run wherever their lease is held.
BACKGROUND_MODULES = ("changes", "integration", "wechat_service", "maintenance")


async def start_background(ctx, primary: bool) -> None:
    """Start every BACKGROUND_MODULES module, in order."""
    for name in BACKGROUND_MODULES:
        mod = importlib.import_module(f"server.{name}")
        await mod.start_background(ctx, primary=primary)


async def drain(server, ctx, grace_s: float) -> None:
    """SIGTERM or SIGINT: stop accepting (HTTP, HL7, DICOM), let what is in flight finish —
    requests and downloads, C-STORE associations, the HL7 message being applied — for at
    most grace_s (shutdown_grace_s), then stop the background jobs (leases released) and
    close the connections that are left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    log.info("stopping: no new connections; waiting up to %s s for those in flight", grace_s)
    server.stop()
    from . import integration
    await integration.drain_background(grace_s)     # listeners first: they feed the rest
    app = server.request_callback
    while getattr(app, "inflight", 0) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if getattr(app, "inflight", 0):
        log.warning("stopping: %d requests still running after %s s are cut", app.inflight,
                    grace_s)
    for name in BACKGROUND_MODULES:
        stop = getattr(importlib.import_module(f"server.{name}"), "stop_background", None)
        if name != "integration" and stop is not None:
            await stop()
    try:
        await asyncio.wait_for(server.close_all_connections(), 5)
    except asyncio.TimeoutError:
        pass
    ctx.close()
    log.info("stopped")


def _forward_stop_to_workers() -> None:
    """In the parent of forked server processes: a SIGTERM or SIGINT sent to the parent
    (systemctl stop with KillMode=mixed, kill PID) goes on to each server process, which
    drains; the parent exits when they have (tornado.process.fork_processes)."""
    parent = os.getpid()

    def forward(signum, _frame):
        if os.getpid() != parent:          # a child before its own handler is installed
            raise SystemExit(0)
        for pid in child_pids(parent):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)


def child_pids(pid: int) -> list[int]:
    """The processes a process forked (its threads' /proc children lists)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _setup_logging(level: str, fmt: str = "text") -> None:
    from render.decode import quiet_pydicom
    quiet_pydicom()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if fmt == "json":
        from .logjson import use_json_lines
        use_json_lines()
    logging.getLogger("numba").setLevel(logging.WARNING)
    logging.getLogger("fontTools").setLevel(logging.WARNING)


def metrics_dir(config):
    """This node's folder of metric files (prometheus_client multiprocess mode): beside the
    server key, named by host and port so nodes sharing that folder never mix theirs."""
    import socket
    host = socket.gethostname()[:40].replace("/", "_") or "node"
    return config.path("secret_key_file").parent / "metrics" / f"{host}-{config.port}"


def prepare_metrics_dir(config) -> None:
    """Empty the metrics folder of the previous run and point prometheus_client at it, so
    one scrape of /metrics shows every process of this server (server/metrics.py)."""
    import shutil
    folder = metrics_dir(config)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def _config(args):
    try:
        return load_config(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"配置错误 / configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2)


def _open(config, migrate_db=True):
    from .context import open_context
    try:
        return open_context(config, migrate_db=migrate_db)
    except Exception as exc:  # noqa: BLE001 - start-up failure: say what, not a traceback
        from models.db import describe_url
        print(f"无法打开数据库 / cannot open the database {describe_url(config.database_url)}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(3)


# demo data ---------------------------------------------------------------------------------
def load_demo(ctx, *, force: bool = False, out=sys.stdout) -> bool:
    """Generate the demo exams and import them, once. Returns True if it loaded them."""
    marker = ctx.storage.root / DEMO_MARKER
    if marker.exists() and not force:
        return False
    from adapters.demo_data import generate_demo
    from adapters.importer import Importer
    from models.catalog import find_exam
    from models.integration import ReportFields, file_report

    work = ctx.config.path("data_dir").parent / "demo-build"
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.monotonic()
    print("正在生成演示数据 / generating demo data …", file=out, flush=True)
    demo = generate_demo(work, ct_slices=ctx.config.demo_ct_slices)
    importer = Importer(ctx.catalog, charset_fallback=ctx.config.charset_fallback,
                        source="demo")
    summary = importer.run([str(p) for p in demo.files])
    if summary.rejected:
        for name, reason in summary.rejected[:5]:
            print(f"  demo file rejected: {Path(name).name}: {reason}", file=out)
    ctx.catalog.set_patient_contacts(getattr(demo, "patients", []))
    for r in demo.reports:
        exam = find_exam(r["study_uid"])
        if exam is None:
            continue
        # the one report-filing function; demo exams are announced to no HL7 receiver
        file_report(ctx.catalog, exam, ReportFields(
            findings=r.get("findings", ""), impression=r.get("impression", ""),
            pdf=r.get("pdf"), author=r.get("author", ""), reviewer=r.get("reviewer", ""),
            signed_at=r.get("signed_at"), status=r.get("status", "final")))
    marker.write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
    shutil.rmtree(work, ignore_errors=True)
    print(f"演示数据已载入 / demo data loaded: {summary.imported} images, "
          f"{len(demo.reports)} reports in {time.monotonic() - t0:.0f} s", file=out, flush=True)
    return True


# commands --------------------------------------------------------------------------------
def cmd_serve(args) -> int:
    config = _config(args)
    _setup_logging(config.log_level, config.log_format)
    prepare_metrics_dir(config)        # before anything imports prometheus_client
    from .file_modes import tighten
    tighten(config)             # files made before umask 077 (or copied in): chmod go-rwx
    ctx = _open(config)
    from models.accounts import ensure_first_admin
    generated = ensure_first_admin(os.environ.get("CLOUDFILM_ADMIN_PASSWORD"))
    if config.demo_data and not args.no_demo:
        load_demo(ctx)
    counts = ctx.catalog.counts()
    ctx.close()
    base = config.base_url
    print("", flush=True)
    print(f"CloudFilm {ctx.version} 已启动 / is serving at {base}/", flush=True)
    print(f"  健康检查 / health:      {base}/healthz  {base}/readyz  {base}/metrics", flush=True)
    print(f"  检查列表 / exams (API): {base}/api/studies", flush=True)
    print(f"  {counts['exams']} exams, {counts['instances']} images in the database", flush=True)
    if generated:
        print(f"  初始管理员 / first admin: admin  密码 / password: {generated}", flush=True)
        print("  (仅显示一次，首次登录须修改 / shown once; must be changed at first login)",
              flush=True)
    return serve_forever(config, args)


def serve_forever(config, args) -> int:
    import tornado.httpserver
    import tornado.netutil
    import tornado.process

    from .app import make_app, startup
    from .context import open_context

    nproc = config.processes or os.cpu_count() or 1
    if nproc > 1:
        # Each worker binds its own SO_REUSEPORT socket after the fork, so the kernel
        # balances connections (one inherited socket let one worker take everything).
        _forward_stop_to_workers()
        tornado.process.fork_processes(nproc, max_restarts=1000)

    ssl_options = None
    if config.tls_cert_file:
        from .tls import TlsError, ssl_context
        try:
            ssl_options = ssl_context(config.path("tls_cert_file"), config.path("tls_key_file"))
        except TlsError as exc:
            print(f"TLS 配置错误 / TLS configuration error: {exc}", file=sys.stderr)
            return 2

    async def main():
        # Start-up order: context (database, storage) → the route modules' startup (stored
        # settings, settings refresh, outbox senders, integrity hook) → routes and sockets →
        # background modules (listeners in the primary process, leased singleton jobs).
        ctx = open_context(config, migrate_db=False)
        startup(ctx)
        from .handlers.base import StaticFiles      # security: no version, JSON errors
        app = make_app(ctx, static_handler_class=StaticFiles)
        server = tornado.httpserver.HTTPServer(app, xheaders=False, ssl_options=ssl_options,
                                               max_body_size=config.max_request_body_mb << 20)
        # the numba kernels and the JPEG encoder load before the port opens: loading them
        # holds the GIL for ~0.1 s, which the first request after a restart used to wait for
        try:
            await asyncio.get_running_loop().run_in_executor(ctx.executor,
                                                             ctx.renders.warm_up)
        except Exception:  # noqa: BLE001 - the first render pays for it instead
            logging.getLogger(__name__).exception("render warm-up failed")
        sockets = tornado.netutil.bind_sockets(config.port, config.host,
                                               reuse_port=nproc > 1,
                                               backlog=config.listen_backlog)
        server.add_sockets(sockets)
        # Listeners (DICOM, HL7) bind their ports in one process per machine: the first
        # worker, or the only process. Singleton jobs (outbox, scrub, watched folder, WeChat
        # token) are tried by every process and run in the one holding their lease.
        primary = nproc == 1 or tornado.process.task_id() == 0
        await start_background(ctx, primary)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await drain(server, ctx, config.shutdown_grace_s)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def cmd_import(args) -> int:
    config = _config(args)
    _setup_logging("ERROR")      # the summary names every problem
    ctx = _open(config)
    from adapters.importer import Importer, format_summary
    importer = Importer(ctx.catalog, charset_fallback=config.charset_fallback,
                        max_file_bytes=config.max_import_file_mb << 20,
                        fast_copies=config.predecode_after_import)
    summary = importer.run(args.paths, progress=True)
    if args.json:
        print(json.dumps(summary.as_dict(), ensure_ascii=False, indent=1))
    else:
        print(format_summary(summary))
    ctx.close()
    return 0 if (summary.imported or summary.already_present or summary.reports
                 or not summary.rejected) else 1


def cmd_migrate(args) -> int:
    config = _config(args)
    _setup_logging(config.log_level)
    ctx = _open(config, migrate_db=False)
    from models.migrations import current_version, migrate, rollback
    if args.to is not None and args.to < current_version():
        ran = rollback(args.to)
    else:
        ran = migrate(args.to)
    print(f"schema version {current_version()}" + (f" (ran: {', '.join(ran)})" if ran else ""))
    ctx.close()
    return 0


def cmd_demo(args) -> int:
    config = _config(args)
    _setup_logging("WARNING")
    ctx = _open(config)
    loaded = load_demo(ctx, force=args.force)
    if not loaded:
        print("演示数据已存在 / demo data already loaded (use --force to load again)")
    ctx.close()
    return 0


def cmd_check_config(args) -> int:
    config = _config(args)
    from models.db import describe_url
    for name, value in config.as_dict().items():
        shown = describe_url(value) if name == "database_url" else value
        print(f"{name} = {shown!r}   ({config.origins[name]})")
    return 0


def cmd_settings(args) -> int:
    print(settings_markdown())
    return 0


def cmd_ohif_install(args) -> int:
    """Fetch the pinned OHIF viewer with npm into ohif_dir (or --dir); docs/ohif.md."""
    from pathlib import Path

    from . import ohif_install
    dest = Path(args.dir).resolve() if args.dir else _config(args).path("ohif_dir")
    try:
        ohif_install.install(dest, force=args.force)
    except ohif_install.InstallError as exc:
        print(f"OHIF 安装失败 / OHIF install failed: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_user_add(args) -> int:
    config = _config(args)
    _setup_logging("WARNING")
    ctx = _open(config)
    import getpass

    from models.accounts import PasswordPolicyError, create_user
    from server.policy import ADMIN_ROLES, ROLES
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        print(f"unknown role {', '.join(bad) or '(none)'}; roles: {', '.join(ROLES)}",
              file=sys.stderr)
        return 2
    if len(set(roles) & ADMIN_ROLES) > 1:
        print("一个账号不能同时拥有两个管理员角色 / no account may hold two admin roles",
              file=sys.stderr)
        return 2
    password = os.environ.get("CLOUDFILM_NEW_USER_PASSWORD") or getpass.getpass("password: ")
    try:
        create_user(args.username, password, roles, must_change_password=not args.no_change)
    except (PasswordPolicyError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    ctx.auditor.record("user.create", actor_kind="cli", actor_id=os.environ.get("USER", ""),
                       object_type="staff_user", object_id=args.username,
                       detail="roles=" + ",".join(roles))
    print(f"created {args.username} ({', '.join(roles)})")
    ctx.close()
    return 0


def cmd_token(args) -> int:
    config = _config(args)
    _setup_logging("WARNING")
    ctx = _open(config)
    from models.accounts import token_refusal
    from models.sessions import create_api_token
    from models.staff import staff_user_named
    user = staff_user_named(args.username)
    if user is None or not user.active:
        print(f"no active staff account named {args.username!r}", file=sys.stderr)
        return 2
    why = token_refusal(user)
    if why:
        print(why, file=sys.stderr)
        return 2
    if user.must_change_password:
        print("note: this account must change its password before its tokens work "
              "(sign in once, or create it with user-add --no-change)", file=sys.stderr)
    token = create_api_token(user, name=args.name, days=args.days)
    issuer = os.environ.get("USER", "")
    ctx.auditor.record("token.create", actor_kind="cli", actor_id=issuer,
                       object_type="staff_user", object_id=args.username,
                       detail=f"owner={args.username} issuer=cli:{issuer[:32]} "
                              f"days={args.days}")
    print(token)
    print(f"(shown once; valid {args.days} days; send it as 'Authorization: Bearer …')",
          file=sys.stderr)
    ctx.close()
    return 0


def cmd_peers(args) -> int:
    """The trusted integration peers: list, add (or update), remove, enable, disable."""
    config = _config(args)
    _setup_logging("WARNING")
    ctx = _open(config)
    from models.catalog import CatalogError
    from models.peers import delete_peer, list_peers, save_peer
    from models.staff import Actor
    actor = Actor("cli", os.environ.get("USER", ""))
    try:
        if args.action == "list":
            peers = list_peers()
            if args.json:
                print(json.dumps(peers, ensure_ascii=False, indent=1))
            for p in [] if args.json else peers:
                print(f"{p['name']:<16} {p['kind']:<6} {'on ' if p['enabled'] else 'off'} "
                      f"{','.join(p['addresses']) or '(any address)'} {p['ae_title']} "
                      f"{','.join(p['allowed']) or '(all)'}"
                      f"{' identity' if p['may_change_identity'] else ''}"
                      f"{' charset=' + p['charset'] if p['charset'] else ''}")
            return 0
        if not args.name:
            print("name the peer", file=sys.stderr)
            return 2
        if args.action == "remove":
            delete_peer(args.name, actor=actor, auditor=ctx.auditor)
            print(f"removed {args.name}")
            return 0
        old = {p["name"]: p for p in list_peers()}.get(args.name)
        d = dict(old or {"name": args.name})
        for key in ("kind", "addresses", "ae_title", "allowed", "charset"):
            if getattr(args, key, None) is not None:
                d[key] = getattr(args, key)
        if args.identity is not None:
            d["may_change_identity"] = args.identity == "yes"
        if args.action in ("enable", "disable"):
            if old is None:
                print(f"no peer named {args.name!r}", file=sys.stderr)
                return 2
            d["enabled"] = args.action == "enable"
        peer, created = save_peer(d, actor=actor, auditor=ctx.auditor)
        print(("added " if created else "updated ") + json.dumps(peer, ensure_ascii=False))
        return 0
    except CatalogError as exc:
        print(f"错误 / error: {exc}", file=sys.stderr)
        return 2
    finally:
        ctx.close()


# security: audit verify/export, backup/restore, make-cert ---------------------------------
def cmd_audit(args) -> int:
    config = _config(args)
    _setup_logging("WARNING")
    ctx = _open(config)
    try:
        if args.action == "verify":
            res = ctx.auditor.verify()
            if res.ok:
                print(f"审计链完整 / audit chain intact: {res.checked} records verified")
                return 0
            print(f"审计链被破坏 / AUDIT CHAIN BROKEN: {res.problem} "
                  f"({res.checked} records verified before it)", file=sys.stderr)
            return 1
        import datetime as dt

        from models.audit import audit_rows_since
        rows = audit_rows_since(dt.datetime.fromisoformat(args.since) if args.since else None)
        text = ctx.auditor.export_csv(rows)
        if args.out and args.out != "-":
            Path(args.out).write_text(text, encoding="utf-8-sig")
            print(f"wrote {args.out}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0
    finally:
        ctx.close()


def cmd_backup(args) -> int:
    config = _config(args)
    _setup_logging("WARNING")
    ctx = _open(config)
    from adapters.backup import BackupError, backup
    try:
        m = backup(Path(args.dest), database_url=config.database_url,
                   data_dir=config.path("data_dir"),
                   secret_key_file=config.path("secret_key_file"), root=ROOT)
    except BackupError as exc:
        print(f"备份失败 / backup failed: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.close()
    print(f"备份完成 / backup written to {args.dest}: database ({m['database']['kind']}), "
          f"{len(m['files'])} files with SHA-256 checksums")
    return 0


def cmd_restore(args) -> int:
    config = _config(args)
    _setup_logging("WARNING")
    from adapters.backup import BackupError, restore
    try:
        m = restore(Path(args.src), database_url=config.database_url,
                    data_dir=config.path("data_dir"),
                    secret_key_file=config.path("secret_key_file"), root=ROOT,
                    force=args.force)
    except BackupError as exc:
        print(f"恢复失败 / restore failed: {exc}", file=sys.stderr)
        return 1
    print(f"恢复完成 / restored from {args.src}: database, {len(m['files'])} files verified; "
          "restart the server")
    return 0


def cmd_make_cert(args) -> int:
    from .tls import TlsError, certificate_summary, make_self_signed
    cert = Path(args.cert).resolve()
    key = Path(args.key).resolve()
    if (cert.exists() or key.exists()) and not args.force:
        print(f"{cert} or {key} exists; use --force to replace them", file=sys.stderr)
        return 2
    hosts = [h.strip() for h in (args.hosts or "localhost,127.0.0.1").split(",") if h.strip()]
    try:
        make_self_signed(cert, key, hosts=hosts, days=args.days)
    except TlsError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(certificate_summary(cert))
    print(f"certificate: {cert}\nkey:         {key} (mode 0600)\n"
          f"use it: CLOUDFILM_TLS_CERT_FILE={cert} CLOUDFILM_TLS_KEY_FILE={key} ./run.sh serve\n"
          "(self-signed: for trials only; browsers warn until the hospital's CA signs one)")
    return 0


def cmd_share(args) -> int:
    config = _config(args)
    _setup_logging("WARNING")
    ctx = _open(config)
    import datetime as dt

    from models import shares as svc
    from models.catalog import find_exam_by_accession
    try:
        exam = find_exam_by_accession(args.accession)
        if exam is None:
            print(f"no exam with accession number {args.accession!r}", file=sys.stderr)
            return 2
        delta = svc.parse_duration(args.expires)
        actor = os.environ.get("USER", "cli")
        if args.pacs_token:
            from .handlers.shares import pacs_key
            token = svc.sign_pacs_token(pacs_key(ctx), args.accession,
                                        svc.utcnow() + delta)
            print(json.dumps({"pacs_token": token, "expires_at": (svc.utcnow() + delta)
                              .isoformat() + "Z"}, ensure_ascii=False))
            return 0
        new = svc.create_share(exam, key=ctx.secret_key, auditor=ctx.auditor,
                               include_images=not args.report_only,
                               allow_download=not args.no_download and not args.report_only,
                               max_opens=args.max_opens, expires_in=delta,
                               max_expiry=dt.timedelta(days=config.share_max_days),
                               created_by_kind="cli", created_by=actor)
    except svc.AccessRefused as exc:
        print(str(exc), file=sys.stderr)
        return 2
    finally:
        ctx.close()
    print(json.dumps({"url": f"{config.base_url}/s/{new.token}", "code": new.code,
                      "expires_at": new.share.expires_at.isoformat() + "Z",
                      "max_opens": new.share.max_opens, "study_uid": exam.study_uid,
                      "include_images": bool(new.share.include_images),
                      "allow_download": bool(new.share.allow_download)}, ensure_ascii=False))
    return 0


def cmd_inbound(args) -> int:
    """`inbound show ID`: one stored inbound message decrypted (models/personal_data.py),
    for the system admin's troubleshooting; audited `inbound.reveal` before it is shown."""
    config = _config(args)
    _setup_logging("WARNING")
    ctx = _open(config)
    from models.personal_data import inbound_message
    try:
        m = inbound_message(args.id, reveal=not args.redacted)
        if m is None:
            print(f"没有该消息 / no inbound message with id {args.id}", file=sys.stderr)
            return 2
        if not args.redacted:
            ctx.auditor.record("inbound.reveal", actor_kind="cli",
                               actor_id=os.environ.get("USER", ""),
                               object_type="inbound_message", object_id=str(m["id"]),
                               outcome="error" if m["problem"] else "ok",
                               detail=f"{m['channel']} {m['type']}"[:200])
    finally:
        ctx.close()
    text = m.pop("raw")
    print(json.dumps(m, ensure_ascii=False))
    if m["problem"]:
        print(m["problem"], file=sys.stderr)
        return 1
    print(text.replace("\r\n", "\n").replace("\r", "\n"))
    return 0


SERVICE_TEMPLATE = ROOT / "conf" / "systemd" / "cloudfilm.service"


def render_service_unit(user: str) -> str:
    text = SERVICE_TEMPLATE.read_text(encoding="utf-8")
    return text.replace("@ROOT@", str(ROOT)).replace("@USER@", user)


def cmd_install_service(args) -> int:
    user = args.user or os.environ.get("SUDO_USER") or os.environ.get("USER") or "root"
    unit = render_service_unit(user)
    dest = Path(args.dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / "cloudfilm.service"
        target.write_text(unit, encoding="utf-8")
    except PermissionError:
        print(f"没有权限写入 / no permission to write {dest}: run it as root "
              "(sudo ./run.sh install-service)", file=sys.stderr)
        return 1
    print(f"wrote {target}")
    if args.no_enable:
        return 0
    if not shutil.which("systemctl") or not Path("/run/systemd/system").exists():
        print("systemd is not running on this machine: the unit was written but not enabled. "
              "On the hospital server run: systemctl daemon-reload && systemctl enable --now "
              "cloudfilm", file=sys.stderr)
        return 1
    for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "cloudfilm"]):
        rc = subprocess.call(cmd)
        if rc:
            print(f"{' '.join(cmd)} failed (exit {rc})", file=sys.stderr)
            return rc
    print("cloudfilm.service enabled: it starts at boot and restarts if it stops")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.sh", description="CloudFilm 云胶片")
    p.add_argument("--config", help="TOML settings file (default conf/cloudfilm.toml)")
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("serve", help="start the server (default)")
    s.add_argument("--no-demo", action="store_true", help="do not load the demo data")
    s.set_defaults(func=cmd_serve)
    s = sub.add_parser("import", help="import DICOM files, folders, DICOMDIR media, ZIP files")
    s.add_argument("paths", nargs="+")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_import)
    s = sub.add_parser("migrate", help="apply database migrations (or roll back with --to)")
    s.add_argument("--to", type=int)
    s.set_defaults(func=cmd_migrate)
    s = sub.add_parser("demo", help="load the demo data now")
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=cmd_demo)
    s = sub.add_parser("check-config", help="print the effective settings and their origin")
    s.set_defaults(func=cmd_check_config)
    s = sub.add_parser("settings", help="print the settings table (Markdown)")
    s.set_defaults(func=cmd_settings)
    s = sub.add_parser("user-add", help="create a staff account (password from "
                                       "CLOUDFILM_NEW_USER_PASSWORD or prompted)")
    s.add_argument("username")
    s.add_argument("--roles", required=True,
                   help="comma-separated: frontdesk, doctor, sysadmin, secadmin, auditadmin")
    s.add_argument("--no-change", action="store_true",
                   help="do not force a password change at first sign-in")
    s.set_defaults(func=cmd_user_add)
    s = sub.add_parser("token", help="print a new API token for a staff account (shown once)")
    s.add_argument("username")
    s.add_argument("--name", default="cli")
    s.add_argument("--days", type=int, default=90)
    s.set_defaults(func=cmd_token)
    s = sub.add_parser("audit", help="verify the tamper-evident audit chain, or export it "
                                     "as CSV")
    s.add_argument("action", choices=("verify", "export"))
    s.add_argument("--since", help="export: first day (YYYY-MM-DD)")
    s.add_argument("--out", help="export: CSV file to write (default: standard output)")
    s.set_defaults(func=cmd_audit)
    s = sub.add_parser("peers", help="the trusted HL7, DICOM and import-API senders: list, "
                                     "add (or update), remove, enable, disable")
    s.add_argument("action", choices=("list", "add", "remove", "enable", "disable"))
    s.add_argument("name", nargs="?")
    s.add_argument("--kind", choices=("hl7", "dicom", "import"))
    s.add_argument("--addresses", help="source addresses, CIDR, comma-separated "
                                       "(empty: any address)")
    s.add_argument("--ae-title", dest="ae_title", help="calling AE title (DICOM)")
    s.add_argument("--allowed", help="message types (HL7: ADT^A08,ORU^R01) or SOP class "
                                     "UIDs (DICOM), comma-separated; empty: all")
    s.add_argument("--identity", choices=("yes", "no"),
                   help="may change a patient's phone and ID number (the patient master)")
    s.add_argument("--charset", help="character set override of this sender")
    s.add_argument("--json", action="store_true", help="list: print JSON")
    s.set_defaults(func=cmd_peers)
    s = sub.add_parser("backup", help="consistent copy of the database, the files (with "
                                      "SHA-256 checksums) and the secret key into DEST")
    s.add_argument("dest")
    s.set_defaults(func=cmd_backup)
    s = sub.add_parser("restore", help="restore a backup made by `backup` (server stopped)")
    s.add_argument("src")
    s.add_argument("--force", action="store_true",
                   help="replace a database and data folder that are not empty")
    s.set_defaults(func=cmd_restore)
    s = sub.add_parser("make-cert", help="make a self-signed TLS certificate for trials")
    s.add_argument("--cert", default=str(ROOT / "var" / "tls" / "cert.pem"))
    s.add_argument("--key", default=str(ROOT / "var" / "tls" / "key.pem"))
    s.add_argument("--hosts", help="comma-separated names/addresses "
                                   "(default localhost,127.0.0.1)")
    s.add_argument("--days", type=int, default=825)
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=cmd_make_cert)
    s = sub.add_parser("share", help="create a share of one exam and print its URL, code "
                                     "and expiry as JSON")
    s.add_argument("accession")
    s.add_argument("--max-opens", type=int, default=5)
    s.add_argument("--expires", default="7d", help="validity: 7d, 12h, 30m (default 7d)")
    s.add_argument("--no-download", action="store_true",
                   help="do not allow downloading the original DICOM files")
    s.add_argument("--report-only", action="store_true", help="share the report without images")
    s.add_argument("--pacs-token", action="store_true",
                   help="print a signed PACS QR token for the exam instead of a share")
    s.set_defaults(func=cmd_share)
    s = sub.add_parser("inbound", help="show one stored inbound message (HL7, import API) "
                                       "decrypted, for troubleshooting (audited)")
    s.add_argument("action", choices=("show",))
    s.add_argument("id", type=int, help="the message's id (integration status page)")
    s.add_argument("--redacted", action="store_true",
                   help="ID numbers and phones masked, as staff screens show it")
    s.set_defaults(func=cmd_inbound)
    s = sub.add_parser("install-service", help="install and enable the systemd service")
    s.add_argument("--dest", default="/etc/systemd/system")
    s.add_argument("--user", help="account the service runs as (default: the invoking user)")
    s.add_argument("--no-enable", action="store_true", help="only write the unit file")
    s.set_defaults(func=cmd_install_service)
    s = sub.add_parser("ohif-install", help="fetch the pinned OHIF viewer with npm into "
                                            "ohif_dir (docs/ohif.md)")
    s.add_argument("--dir", help="install here instead of the ohif_dir setting")
    s.add_argument("--force", action="store_true", help="reinstall even if present")
    s.set_defaults(func=cmd_ohif_install)
    return p


def main(argv: list[str] | None = None) -> int:
    # Before anything is created: the database, the key, derived files, logs, backups are
    # readable by the service account only (server/file_modes.py).
    from .file_modes import PRIVATE_UMASK
    os.umask(PRIVATE_UMASK)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd is None:
        args = parser.parse_args((argv or []) + ["serve"])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
