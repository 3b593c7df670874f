"""CloudFilm settings: one table, read from a TOML file, overridden by the environment.

Every setting is a row of SETTINGS (name, default, type, help). The file is
conf/cloudfilm.toml unless CLOUDFILM_CONFIG names another; every setting can be
overridden by the environment variable CLOUDFILM_<NAME> (upper case).
An unknown key or a value of the wrong type stops start-up with a message that
names it (ConfigError).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = ROOT / "conf" / "cloudfilm.toml"
_log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A configuration problem that must stop start-up."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    type: type
    help: str
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    group: str = ""          # run-time settings: the group they are shown and changed in
    runtime: bool = False    # may an admin change it while the server runs (server/settings.py)
    label: str = ""          # short Chinese / English name for the admin pages' messages


SETTINGS: tuple[Setting, ...] = (
    Setting("host", "127.0.0.1", str,
            "Address the server listens on. A non-loopback address needs TLS "
            "(tls_cert_file/tls_key_file) or allow_plain_http = true."),
    Setting("port", 8080, int, "HTTP port.", minimum=1, maximum=65535),
    Setting("public_url", "", str,
            "Base URL people use to reach the server (printed at start-up, used in share "
            "links). Empty: http://HOST:PORT."),
    Setting("database_url", "sqlite:///var/cloudfilm.db", str,
            "Database: sqlite:///relative/or/absolute.db or mysql://user:pass@host:3306/db "
            "(MySQL or MariaDB, utf8mb4)."),
    Setting("data_dir", "var/data", str,
            "Folder holding the original DICOM files, report PDFs and quarantined files. "
            "Relative paths are relative to the project folder."),
    Setting("secret_key_file", "var/secret.key", str,
            "File holding the server's secret key (created with mode 0600 on first start). "
            "Keep it out of the repository and back it up: it keys the national-ID hashes."),
    Setting("charset_fallback", "GB18030", str,
            "Character set used for DICOM text when a file has no Specific Character Set "
            "(0008,0005) but carries non-ASCII bytes (GB18030 also reads GBK).",
            choices=("GB18030", "GBK", "ISO_IR 192", "ISO_IR 100")),
    Setting("demo_data", True, bool, "Load the demo exams on the first start."),
    Setting("demo_ct_slices", 220, int, "Slices per demo CT exam (512x512 each).",
            minimum=8, maximum=1000),
    Setting("max_import_file_mb", 2048, int,
            "Largest single DICOM file (or ZIP entry) accepted by an import, in MiB.",
            minimum=1, maximum=65536),
    Setting("render_threads", 4, int, "Threads decoding and rendering images.",
            minimum=1, maximum=64),
    Setting("render_shed_background_ms", 2000, int,
            "Background renders (previews and prefetches a viewer asks for with "
            "X-Render-Priority: 2) are refused with 429 + Retry-After when the render queue "
            "would keep them waiting longer than this many milliseconds; the viewer asks "
            "again later. The frame a person is waiting for is never refused.",
            minimum=100, maximum=600000),
    Setting("render_shed_loop_lag_ms", 100, int,
            "Background renders (X-Render-Priority: 2) are also refused with 429 + Retry-After "
            "while this process's event loop runs this many milliseconds late (more requests "
            "than it can serve in time), so the first frames of people who are waiting get "
            "the server.", minimum=10, maximum=600000),
    Setting("processes", 0, int,
            "Server processes sharing the port (SO_REUSEPORT). 0 means one per CPU core: "
            "on 2 cores, 500 phones got their first image in 681 ms (p95) from 2 processes "
            "against 1,027 ms from one process with a core of its own (bench/load_bench.py).",
            minimum=0, maximum=64),
    Setting("listen_backlog", 2048, int,
            "Connections the kernel queues on the server's port before they are accepted "
            "(listen(2) backlog, capped by net.core.somaxconn). Tornado's default of 128 "
            "overflowed when hundreds of phones connected at once: each dropped connection "
            "waited 1 s or more for its retry (bench/load_bench.py, 'listen drops').",
            minimum=16, maximum=65535),
    Setting("shutdown_grace_s", 30, int,
            "On SIGTERM (systemctl stop, a deploy) the server stops accepting connections and "
            "lets what is in flight finish: HTTP requests and downloads, C-STORE associations, "
            "the HL7 message being applied; after this many seconds it ends the rest and exits.",
            minimum=0, maximum=3600),
    Setting("change_poll_ms", 250, int,
            "How often each server process reads the change marker (one primary-key query), "
            "so that images switched off, a share revoked, a session ended or an account "
            "deactivated on any node are honoured by every node within this time (plus one "
            "query); see docs/cluster.md.", minimum=50, maximum=1000),
    Setting("decode_processes", 0, int,
            "Worker processes (per server process) that decode compressed originals which "
            "have no fast copy yet, so decoding never stalls the server and a never-seen "
            "series decodes on every core. They start with the server (about 60 MB each). "
            "0 means one per CPU core.",
            minimum=0, maximum=32),
    Setting("max_decoded_mb", 1024, int,
            "Largest decoded image accepted (rows x columns x frames x samples x bytes per "
            "sample, from the header, checked before anything is decoded), in MiB: a larger "
            "file is refused at import, C-STORE (0xA700), STOW-RS and render (422). 1024 "
            "passes every real image we know (pydicom-data's largest: 105 MiB; a 300-frame "
            "1024x1024 XA run: 300 MiB). Decode workers may use about 3x this plus 512 MiB.",
            minimum=16, maximum=65536),
    Setting("max_frame_mb", 192, int,
            "Largest decoded single frame accepted (rows x columns x samples x bytes per "
            "sample), in MiB, checked with max_decoded_mb: 192 passes an 8192x8192 RGB frame "
            "(the largest real frames, mammography and CR, are under 64 MiB) and refuses a "
            "16384x16384 decompression bomb (256 MiB).", minimum=16, maximum=65536),
    Setting("render_heavy_per_principal", 1, int,
            "Heavy renders (MIP, MPR, volumes) one viewer (session, share, API token or "
            "address) runs at the same time; the others wait in that viewer's own queue. "
            "Heavy renders together always leave one render thread to image frames.",
            minimum=1, maximum=16),
    Setting("render_max_px_visitor", 1024, int,
            "Longest side of a MIP or MPR image rendered for a patient or share visitor "
            "(larger requests are rendered at this size).", minimum=128, maximum=4096,
            group="system", runtime=True, label="访客三维图像最大边长 / visitor 3D image size"),
    Setting("render_max_px_staff", 2048, int,
            "Longest side of a MIP or MPR image rendered for staff.", minimum=128,
            maximum=4096, group="system", runtime=True,
            label="员工三维图像最大边长 / staff 3D image size"),
    Setting("decoded_cache_mb", 1024, int, "Byte budget of the decoded-pixel cache (MiB).",
            minimum=16, maximum=262144),
    Setting("volume_cache_mb", 1024, int, "Byte budget of the MPR volume cache (MiB).",
            minimum=16, maximum=262144),
    Setting("jpeg_cache_mb", 256, int, "Byte budget of the encoded-image cache (MiB).",
            minimum=0, maximum=65536),
    Setting("default_jpeg_quality", 85, int, "JPEG quality when a request names none.",
            minimum=1, maximum=100),
    Setting("predecode_after_import", True, bool,
            "Decode compressed series in the background after they are stored, so the first "
            "view does not wait for JPEG 2000 decoding."),
    Setting("log_level", "INFO", str, "Logging level.",
            choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    Setting("log_format", "text", str,
            "Log lines as text, or json: one JSON object a line (time, level, logger, "
            "message; access lines add method, path, status, ms, route group), for a log "
            "collector. Paths are masked the same way in both.", choices=("text", "json")),
    Setting("min_free_disk_mb", 1024, int,
            "Free space (MiB) the data folder and the SQLite database's folder must keep: "
            "below it /readyz answers 503 (disk: low free space) so a load balancer sends "
            "no more work to this node. 0: not checked.", minimum=0, maximum=1048576),
    # integration
    Setting('dicom_scp_enabled', False, bool,
            'Run the DICOM listener (C-ECHO, C-STORE for every storage SOP class, any transfer syntax).'),
    Setting('dicom_ae_title', 'CLOUDFILM', str,
            "AE title of CloudFilm's DICOM listener (also the C-MOVE destination named to the PACS)."),
    Setting('dicom_bind', '127.0.0.1', str,
            'Address the DICOM listener binds (0.0.0.0 to take images from the hospital network).'),
    Setting('dicom_port', 11112, int,
            'Port of the DICOM listener.', minimum=1, maximum=65535),
    Setting('dicom_allowed_aets', '', str,
            'Calling AE titles allowed to associate, comma-separated. Empty: any calling AE title (logged at start-up).', group="pacs", runtime=True),
    Setting("dicom_charset_overrides", "", str,
            "Senders whose files carry text in another character set than their Specific "
            "Character Set (0008,0005) says: CALLING_AE=CHARSET, comma-separated, CHARSET one "
            "of GB18030, GBK, ISO_IR 192, ISO_IR 100, ISO 2022 IR 58 (e.g. US01=GBK for an "
            "ultrasound that labels GBK names ISO_IR 100). Read at start-up."),
    Setting("dicom_peers", "", str,
            "DICOM nodes our Query/Retrieve SCP may send to (C-MOVE destinations): "
            "AE=host:port, comma-separated (e.g. WS1=10.0.0.21:104). A C-MOVE to any other AE "
            "title is refused (0xA801). These AE titles may also call us when "
            "dicom_allowed_aets is set, and are the destinations doctors may send exams to "
            "from the workspace (send to workstation). Read at start-up."),
    Setting('dicom_max_associations', 8, int,
            'DICOM associations served at the same time.', minimum=1, maximum=64),
    Setting("dicom_tls_cert_file", "", str,
            "PEM certificate of the DICOM listener: with dicom_tls_key_file set, the listener "
            "speaks DICOM over TLS only (TLS 1.2+). Empty: plain DICOM."),
    Setting("dicom_tls_key_file", "", str, "PEM private key of dicom_tls_cert_file."),
    Setting("dicom_tls_ca_file", "", str,
            "PEM CA certificates: DICOM senders must present a client certificate signed by "
            "one of them. Empty: no client certificate asked."),
    Setting("peers_allow_unknown", False, bool,
            "Accept HL7, DICOM and import-API senders that are not in the peer table "
            "(./run.sh peers, /api/admin/peers) although the listener is bound to a "
            "non-loopback address. Off: they are refused and audited (peer.refused); on "
            "loopback unknown senders are always accepted."),
    Setting('pacs_ae_title', '', str,
            "AE title of the hospital PACS queried for a patient's history (C-FIND) and retrieved from on demand. Empty: no PACS.", group="pacs", runtime=True),
    Setting('pacs_host', '', str,
            'Host name or address of the hospital PACS.', group="pacs", runtime=True),
    Setting('pacs_port', 104, int,
            'DICOM port of the hospital PACS.', minimum=1, maximum=65535, group="pacs", runtime=True),
    Setting('pacs_retrieve', 'move', str,
            'How exams are fetched from the PACS: move (C-MOVE to our listener; the PACS must know our AE title) or get (C-GET on the same association).', choices=("move", "get"), group="pacs", runtime=True),
    Setting("dicom_conflict_policy", "replace", str,
            "A SOP Instance UID received again with other pixel data: replace (a new version "
            "is shown, the previous file kept with its history), keep_first (the stored one "
            "stays; the newcomer is kept in the quarantine and answered with warning 0xB000) "
            "or quarantine (refused with 0xC002). The same content in another form is always "
            "a no-op success; corrected attributes with the same pixels are always a new "
            "version (docs/integration.md, Resends and corrections).",
            choices=("replace", "keep_first", "quarantine"), group="pacs", runtime=True),
    Setting("dicom_version_retention_days", 365, int,
            "Days the superseded file of a replaced instance version is kept before the "
            "maintenance job deletes it (the history row stays). 0: keep forever.",
            minimum=0, maximum=36500, group="pacs", runtime=True),
    Setting('hl7_enabled', False, bool,
            'Run the HL7 v2 MLLP listener (ADT, ORM/OMI, ORU with PDF).'),
    Setting('hl7_bind', '127.0.0.1', str,
            'Address the HL7 MLLP listener binds (0.0.0.0 for the hospital network).'),
    Setting('hl7_port', 2575, int,
            'Port of the HL7 MLLP listener.', minimum=1, maximum=65535),
    Setting("hl7_charset_overrides", "", str,
            "Senders whose messages are in another character set than their MSH-18 says: "
            "SENDER=CHARSET, comma-separated; SENDER is MSH-3 or MSH-4, CHARSET one of GB18030, "
            "GBK, UTF-8, ISO-8859-1 (e.g. OLDHIS=GBK). Read at start-up."),
    Setting("hl7_max_message_mb", 32, int,
            "Largest HL7 message (one MLLP frame) accepted, in MiB; a larger one is read to "
            "its end and answered AR, and the connection stays usable.", minimum=1,
            maximum=512),
    Setting("hl7_idle_timeout_s", 300, int,
            "An MLLP connection that sends nothing for this many seconds is closed.",
            minimum=5, maximum=86400),
    Setting("hl7_tls_cert_file", "", str,
            "PEM certificate of the HL7 MLLP listener: with hl7_tls_key_file set, MLLP is "
            "served over TLS only (TLS 1.2+). Empty: plain MLLP."),
    Setting("hl7_tls_key_file", "", str, "PEM private key of hl7_tls_cert_file."),
    Setting("hl7_tls_ca_file", "", str,
            "PEM CA certificates: HL7 senders must present a client certificate signed by one "
            "of them. Empty: no client certificate asked."),
    Setting("hl7_max_connections", 8, int,
            "MLLP connections served at the same time; one more is closed at once (logged, "
            "with the peer's address only).", minimum=1, maximum=256),
    Setting("hl7_buffer_budget_mb", 96, int,
            "MiB of unfinished MLLP messages all connections may hold together; the "
            "connection whose read would pass it is closed (logged with the address only). "
            "At least hl7_max_message_mb, so one largest message always fits.",
            minimum=1, maximum=4096),
    Setting('hl7_charset_fallback', 'GB18030', str,
            'Character set of HL7 messages whose MSH-18 is empty (GB18030 also reads GBK).', choices=("GB18030", "GBK", "UTF-8", "ISO-8859-1")),
    Setting('hl7_id_number_field', 'PID-19', str,
            'HL7 field holding the national ID number (PID-19, or PID-3 for the repetition typed ID, or PID-n.c).'),
    Setting('hl7_phone_field', 'PID-13', str,
            "HL7 field holding the patient's mobile phone number (PID-13 or PID-14, optionally .c for a component)."),
    Setting('hl7_accession_field', 'IPC-1', str,
            'HL7 field holding the accession number in OMI/ORM/ORU (IHE: IPC-1; falls back to IPC-1, OBR-18, OBR-3, ORC-3, OBR-2, ORC-2).'),
    Setting('hl7_receivers', '', str,
            "Outbound HL7 receivers for 'film published' notices, comma-separated host:port or host:port/APP^FACILITY (their MSH-5 and MSH-6; without it both are the host). Empty: none.", group="hl7", runtime=True),
    Setting('outbox_enabled', True, bool,
            'Run the outbox worker that delivers outbound messages until acknowledged.'),
    Setting('outbox_max_attempts', 10, int,
            'Delivery attempts before an outbound message goes to the dead-letter list.', minimum=1, maximum=1000, group="outbox", runtime=True),
    Setting('outbox_backoff_s', 5, int,
            'First retry delay of the outbox in seconds; it doubles on every failed attempt.', minimum=1, maximum=86400, group="outbox", runtime=True),
    Setting('outbox_backoff_max_s', 3600, int,
            'Longest delay between two delivery attempts, in seconds.', minimum=1, maximum=604800, group="outbox", runtime=True),
    Setting('import_api_clients_file', '', str,
            'TOML file outside the repository listing import API clients and their keys ([clients] ris = "secret"). Empty: import API off.'),
    Setting('import_api_max_skew_s', 300, int,
            "Largest difference between an import API request's timestamp and the server clock, in seconds.", minimum=10, maximum=86400),
    Setting('watch_dir', '', str,
            'Folder watched for DICOM files, report PDFs and JPEG/PNG/TIFF pictures (with .json sidecars). Empty: off.'),
    Setting('watch_interval_s', 2, int,
            'Seconds between two scans of the watched folder.', minimum=1, maximum=3600),
    # patient access
    Setting("hospital_name", "云胶片示例医院", str,
            "Hospital name shown to patients on the code page, portal, film view, refusal pages "
            "and printed slips."),
    Setting("hospital_phone", "", str,
            "Phone number patients call about their films (shown with every refusal). Empty: "
            "not shown."),
    Setting("hospital_hours", "", str,
            "Opening hours of that phone line, e.g. 周一至周五 8:00-17:30. Empty: not shown."),
    Setting("hospital_logo_file", "", str,
            "PNG, JPEG or SVG logo shown beside the hospital name (at most 512 KiB). Empty: "
            "no logo."),
    Setting("share_default_max_opens", 5, int,
            "Opens a new share allows when its creator names none.", minimum=1, maximum=1000, group="share", runtime=True),
    Setting("share_default_days", 7, int,
            "Days a new share stays valid when its creator names none.", minimum=1,
            maximum=365, group="share", runtime=True),
    Setting("share_max_days", 90, int,
            "Longest validity a share may be given, in days.", minimum=1, maximum=3650, group="share", runtime=True),
    Setting("access_ip_max_failures", 200, int,
            "Failed share codes and identity checks one IP address may make in 15 minutes "
            "(across all shares) before it is refused. Each share and patient QR code locks "
            "on its own after 5 wrong tries; this per-address limit only stops spraying, so "
            "keep it high enough for a hospital's NAT or Wi-Fi where many patients share one "
            "address.", minimum=1, maximum=100000),
    Setting("sms_gateway", "log", str,
            "SMS gateway for verification codes: log (development: nothing is sent, the "
            "number is masked in the log) or http (the hospital's own SMS platform; phone "
            "numbers never go to a cloud service).", choices=("log", "http"), group="sms", runtime=True),
    Setting("sms_http_url", "", str,
            "URL of the hospital SMS platform (sms_gateway = http): JSON POST {phone, message, "
            "template, request_id}; any 2xx answer means accepted. Public IP addresses are "
            "refused."),
    Setting("sms_http_token_file", "", str,
            "File holding the bearer token for the SMS platform (empty: no Authorization "
            "header)."),
    Setting("sms_http_timeout_s", 5, int, "Timeout of one SMS platform request, in seconds.",
            minimum=1, maximum=60, group="sms", runtime=True),
    Setting("sms_template", "您的云胶片验证码为{code}，5分钟内有效，请勿告诉他人。", str,
            "Text of the verification SMS; {code} is replaced by the 6-digit code.", group="sms", runtime=True),
    Setting("sms_per_phone_day", 10, int,
            "SMS codes one phone number may receive in 24 hours.", minimum=1, maximum=1000, group="sms", runtime=True),
    Setting("sms_per_ip_hour", 20, int,
            "SMS codes one IP address may request in an hour.", minimum=1, maximum=100000, group="sms", runtime=True),
    Setting("pacs_qr_patterns", "/pacs/a/{accession},/pacs/u/{study_uid},/pacs/t/{token}", str,
            "Comma-separated URL paths (with an optional ?name={field} query) that PACS-printed "
            "QR codes use; fields {accession}, {study_uid} (unsigned: the patient must verify "
            "their identity) and {token} (signed ACCESSION.EXPIRY.SIG, see docs/pacs-qr.md). "
            "Read at start-up."),
    Setting("pacs_qr_key_file", "", str,
            "File holding the key (hex) shared with the PACS for signed QR tokens. Empty: "
            "signed tokens use the server's secret key (sign them with ./run.sh share "
            "--pacs-token)."),
    Setting("pacs_qr_max_opens", 20, int,
            "Opens allowed for the exam behind one signed PACS QR code.", minimum=1,
            maximum=100000, group="pacs", runtime=True),
    # security
    Setting("tls_cert_file", "", str,
            "PEM certificate chain for HTTPS served by CloudFilm itself (./run.sh make-cert "
            "makes a self-signed one for trials). Empty: plain HTTP (loopback only, or behind "
            "nginx: conf/nginx/cloudfilm.conf)."),
    Setting("tls_key_file", "", str,
            "PEM private key matching tls_cert_file (keep it mode 0600, outside the repository)."),
    Setting("allow_plain_http", False, bool,
            "Allow listening on a non-loopback address without TLS (only behind a TLS reverse "
            "proxy on the same network segment; never for patients on the open network)."),
    Setting("trusted_proxies", "", str,
            "Reverse proxies (addresses or CIDR networks, comma-separated) whose "
            "X-Forwarded-For / X-Real-IP / X-Forwarded-Proto headers give the client's address "
            "and scheme (audit, admin allow-list, per-address limits, Secure cookies, HSTS). "
            "Behind conf/nginx/cloudfilm.conf on the same machine: 127.0.0.1/32. Empty: the "
            "headers are ignored and the connecting address is the client."),
    Setting("max_request_body_mb", 64, int,
            "Largest HTTP request body accepted (uploads included), in MiB; larger requests "
            "are refused before they are read.", minimum=1, maximum=65536),
    Setting("dicomweb_cors_origins", "", str,
            "Browser origins (scheme://host[:port], comma-separated) allowed to call /dicomweb "
            "from another origin (CORS, e.g. a DICOMweb viewer served elsewhere). Empty: no CORS "
            "headers."),
    Setting("ohif_enabled", False, bool,
            "Serve the OHIF v3 viewer at /ohif/ for signed-in staff (install it first with "
            "./run.sh ohif-install; docs/ohif.md)."),
    Setting("ohif_dir", "var/ohif", str,
            "Folder holding the OHIF viewer installed by ./run.sh ohif-install."),
    Setting("password_min_length", 8, int,
            "Shortest staff password accepted.", minimum=8, maximum=64, group="security", runtime=True,
            label="密码最短长度 / minimum password length"),
    Setting("password_min_classes", 3, int,
            "Character classes (lower case, upper case, digits, symbols) a staff password "
            "must mix (level 3 floor: 3).", minimum=3, maximum=4, group="security", runtime=True,
            label="密码字符类别数 / character classes"),
    Setting("password_history", 5, int,
            "A new staff password may not repeat any of this many previous ones (level 3 "
            "floor: 5).", minimum=5, maximum=24, group="security", runtime=True,
            label="不得重复的历史密码个数 / previous passwords not reusable"),
    Setting("password_max_age_days", 90, int,
            "Days after which a staff password must be changed at the next sign-in (level 3: "
            "1 to 90).", minimum=1, maximum=90, group="security", runtime=True,
            label="密码有效期（天） / password maximum age days"),
    Setting("totp_required_roles", "sysadmin,secadmin,auditadmin", str,
            "Roles that must sign in with a second factor (TOTP app or recovery code), "
            "comma-separated; other staff may enrol voluntarily. Level 3 floor: every admin "
            "role (sysadmin, secadmin, auditadmin) is always in it.", group="security",
            runtime=True, label="须用动态口令登录的角色 / roles that need TOTP"),
    Setting("lockout_failures", 5, int,
            "Failed sign-ins (wrong password or wrong code, in any mix) that lock a staff "
            "account (level 3: at most 5).", minimum=3, maximum=5, group="security", runtime=True,
            label="锁定前允许的失败次数 / failures before lock-out"),
    Setting("lockout_minutes", 30, int, "How long a locked staff account stays locked.",
            minimum=5, maximum=1440, group="security", runtime=True,
            label="锁定时长（分钟） / lock-out minutes"),
    Setting("session_idle_minutes", 30, int,
            "Minutes without a request after which a staff session ends.", minimum=5,
            maximum=120, group="security", runtime=True,
            label="空闲超时（分钟） / idle timeout minutes"),
    Setting("session_absolute_hours", 12, int,
            "Hours after sign-in at which a staff session ends however busy.", minimum=1,
            maximum=24, group="security", runtime=True,
            label="会话最长时长（小时） / absolute session hours"),
    Setting("admin_allow_list", "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16",
            str, "Addresses and networks (comma-separated) from which admin accounts may sign "
            "in and use admin functions.", group="security", runtime=True,
            label="管理网络白名单 / admin allow-list"),
    Setting("integrity_scrub_hours", 24, int,
            "Hours between two background re-checks of every original file's SHA-256 "
            "(0: off; files are still checked whenever they are decoded).",
            minimum=0, maximum=8760),
    Setting("integrity_scrub_mb_per_s", 40, int,
            "How fast the background re-check reads the stored files, in MiB/s, so it never "
            "competes with viewers for the disk and a core; it runs in a thread of its own, "
            "in the one node holding its lease.",
            minimum=1, maximum=10000),
    # wechat
    Setting("wechat_app_id", "", str,
            "AppID of the hospital's WeChat Official Account (服务号). Everything WeChat stays off "
            "until the AppID and the three secret files below are set (docs/wechat.md).", group="wechat", runtime=True),
    Setting("wechat_app_secret_file", "", str,
            "File (outside the repository, mode 0600) holding the Official Account's AppSecret."),
    Setting("wechat_callback_token_file", "", str,
            "File holding the Token entered in 服务器配置 (message callback signature)."),
    Setting("wechat_aes_key_file", "", str,
            "File holding the 43-character EncodingAESKey of 服务器配置 (safe-mode messages)."),
    Setting("wechat_message_mode", "safe", str,
            "Message encryption expected on the callback: safe (安全模式, encrypted only) or "
            "compatible (兼容模式, encrypted and plain text accepted).",
            choices=("safe", "compatible"), group="wechat", runtime=True),
    Setting("wechat_api_base_url", "https://api.weixin.qq.com", str,
            "Base URL of WeChat's server API (change only for an outbound proxy)."),
    Setting("wechat_oauth_base_url", "https://open.weixin.qq.com/connect/", str,
            "Base URL of WeChat's web authorisation page."),
    Setting("wechat_timeout_s", 5, int, "Timeout of one request to WeChat's servers, in seconds.",
            minimum=1, maximum=30, group="wechat", runtime=True),
    Setting("wechat_replay_window_s", 300, int,
            "Message callbacks whose timestamp is further than this from our clock are refused, "
            "and a nonce is accepted once within it.", minimum=30, maximum=3600, group="wechat", runtime=True),
    Setting("wechat_notify_enabled", True, bool,
            "Send the 'your report is ready' template message to bound WeChat users.", group="wechat", runtime=True),
    Setting("wechat_template_id", "", str,
            "Template ID of the report-ready template message (模板消息); empty: no template "
            "messages are sent.", group="wechat", runtime=True),
    Setting("wechat_template_fields", "thing1=检查报告已出具;time2={time};thing3=请点击查看", str,
            "Fields of the template message, 'key=value' separated by ';'. Only generic text is "
            "allowed (the text passes through Tencent): {time} is the only placeholder.", group="wechat", runtime=True),
    Setting("wechat_reply_text", "点击查看您的检查报告与云胶片：{link}", str,
            "Reply to a subscribe event and to the keywords 报告/胶片 ({link}: our 'my exams' "
            "page).", group="wechat", runtime=True),
    Setting("wechat_token_refresh_margin_s", 900, int,
            "Refresh the shared access token this many seconds before it expires.",
            minimum=120, maximum=3600),
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}

# The groups run-time settings are shown and changed in (server/settings.py). "security" is
# the security admin's (三员分立); the others are the system admin's.
GROUPS = {
    "sms": "短信网关 / SMS gateway",
    "share": "分享 / shares",
    "pacs": "PACS 连接 / PACS",
    "hl7": "HL7 接口 / HL7",
    "wechat": "微信公众号 / WeChat",
    "outbox": "消息重传 / outbox",
    "security": "安全策略 / security policy",
}

# Environment variables of ours that are not settings (secrets for one command, tests).
RESERVED_ENV = {"CLOUDFILM_CONFIG", "CLOUDFILM_ADMIN_PASSWORD", "CLOUDFILM_NEW_USER_PASSWORD",
                "CLOUDFILM_TEST_DB", "CLOUDFILM_TEST_MYSQL", "CLOUDFILM_TEST_DB_PREFIX"}


def coerce(setting: Setting, value: Any, origin: str) -> Any:
    def fail(why: str) -> ConfigError:
        return ConfigError(f"setting '{setting.name}' from {origin}: {why} (got {value!r}). "
                           f"{setting.help}")

    if setting.type is bool:
        if isinstance(value, bool):
            out = value
        elif isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
            out = True
        elif isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
            out = False
        else:
            raise fail("expected true or false")
    elif setting.type is int:
        if isinstance(value, bool):
            raise fail("expected a whole number")
        if isinstance(value, int):
            out = value
        elif isinstance(value, str):
            try:
                out = int(value.strip())
            except ValueError:
                raise fail("expected a whole number") from None
        else:
            raise fail("expected a whole number")
    elif setting.type is str:
        if not isinstance(value, str):
            raise fail("expected text")
        out = value
    else:  # pragma: no cover - table is static
        raise fail("unsupported setting type")
    if setting.choices and out not in setting.choices:
        raise fail("expected one of " + ", ".join(map(str, setting.choices)))
    if setting.minimum is not None and out < setting.minimum:
        raise fail(f"must be at least {setting.minimum}")
    if setting.maximum is not None and out > setting.maximum:
        raise fail(f"must be at most {setting.maximum}")
    if setting.name == "totp_required_roles":
        named = {r.strip() for r in out.replace(";", ",").replace("\n", ",").split(",")}
        missing = [r for r in LEVEL3_TOTP_ROLES if r not in named]
        if missing:
            raise fail("must name every admin role (level 3 floor), missing "
                       + ", ".join(missing))
    return out


# 等保三级 floor: the admin roles always sign in with a second factor (server/settings.py
# names it on the security admin's page; the other floors are the rows' minimum/maximum).
LEVEL3_TOTP_ROLES = ("sysadmin", "secadmin", "auditadmin")


class Config:
    """The resolved settings; attribute access by setting name. Run-time settings stored by
    an admin (server/settings.py) override the file and environment (apply_stored)."""

    def __init__(self, values: dict[str, Any], origins: dict[str, str]):
        self._values = values
        self.origins = origins
        self._base = dict(values)              # file, environment and command line
        self._base_origins = dict(origins)

    def base_value(self, name: str) -> Any:
        """The value before stored run-time settings (what "back to default" returns to)."""
        return self._base[name]

    def set_base(self, **values: Any) -> None:
        """Change values the process started with (a test; a command's own options), checked
        like the file's. Stored run-time settings still override them."""
        for name, value in values.items():
            if name not in SETTINGS_BY_NAME:
                raise ConfigError(f"unknown setting '{name}'")
            self._base[name] = coerce(SETTINGS_BY_NAME[name], value, "override")
            self._base_origins[name] = "override"
        self._values = {**self._values, **{n: self._base[n] for n in values}}

    def apply_stored(self, stored: dict[str, Any]) -> None:
        """Make stored run-time settings ({name: value}) override the base values; a stored
        value that no longer passes its row's checks is ignored (and logged once)."""
        values, origins = dict(self._base), dict(self._base_origins)
        for name, value in stored.items():
            setting = SETTINGS_BY_NAME.get(name)
            if setting is None or not setting.runtime:
                continue
            try:
                values[name] = coerce(setting, value, "stored setting")
            except ConfigError as exc:
                _log.warning("ignoring stored setting %s: %s", name, exc)
                continue
            origins[name] = "stored setting (admin page)"
        self._values, self.origins = values, origins     # one swap: readers see old or new

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def path(self, name: str) -> Path:
        """A path setting resolved against the project folder."""
        p = Path(self._values[name])
        return p if p.is_absolute() else ROOT / p

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.tls_cert_file else "http"
        return f"{scheme}://{host}:{self.port}"


def load_config(path: str | os.PathLike | None = None,
                env: dict[str, str] | None = None,
                overrides: dict[str, Any] | None = None) -> Config:
    """Read the settings. Raises ConfigError naming any unknown key or bad value."""
    env = dict(os.environ if env is None else env)
    if path is None:
        path = env.get("CLOUDFILM_CONFIG") or DEFAULT_CONFIG_FILE
    path = Path(path)
    file_values: dict[str, Any] = {}
    if path.exists():
        try:
            with open(path, "rb") as fh:
                file_values = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    elif "CLOUDFILM_CONFIG" in env:
        raise ConfigError(f"CLOUDFILM_CONFIG names {path}, which does not exist")

    values = {s.name: s.default for s in SETTINGS}
    origins = {s.name: "default" for s in SETTINGS}
    for key, value in file_values.items():
        if key not in SETTINGS_BY_NAME:
            raise ConfigError(f"{path}: unknown setting '{key}'. Known settings: "
                              + ", ".join(sorted(SETTINGS_BY_NAME)))
        values[key] = coerce(SETTINGS_BY_NAME[key], value, str(path))
        origins[key] = str(path)
    reserved = RESERVED_ENV
    for key, value in env.items():
        if not key.startswith("CLOUDFILM_") or key in reserved:
            continue
        name = key[len("CLOUDFILM_"):].lower()
        if name not in SETTINGS_BY_NAME:
            raise ConfigError(f"environment variable {key}: unknown setting '{name}'. Known "
                              "settings: " + ", ".join(sorted(SETTINGS_BY_NAME)))
        values[name] = coerce(SETTINGS_BY_NAME[name], value, f"environment {key}")
        origins[name] = f"environment {key}"
    for name, value in (overrides or {}).items():
        if name not in SETTINGS_BY_NAME:
            raise ConfigError(f"unknown setting '{name}'")
        values[name] = coerce(SETTINGS_BY_NAME[name], value, "command line")
        origins[name] = "command line"
    _check(values)
    return Config(values, origins)


def _check(values: dict[str, Any]) -> None:
    url = values["database_url"]
    if not (url.startswith("sqlite:///") or url.startswith("mysql://")):
        raise ConfigError(f"setting 'database_url': expected sqlite:///PATH or "
                          f"mysql://user:pass@host:port/db (got {url.split('@')[-1]!r})")
    host = values["host"]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    tls = bool(values.get("tls_cert_file")) or bool(values.get("tls_key_file"))
    if tls and not (values.get("tls_cert_file") and values.get("tls_key_file")):
        raise ConfigError("settings 'tls_cert_file' and 'tls_key_file' go together: set both "
                          "(./run.sh make-cert makes a self-signed pair for trials)")
    try:
        from .proxies import parse_networks
        parse_networks(values.get("trusted_proxies") or "")
    except ValueError as exc:
        raise ConfigError(f"setting 'trusted_proxies': {exc}; expected addresses or CIDR "
                          "networks, comma-separated (e.g. 127.0.0.1/32)") from None
    if not loopback and not tls and not values.get("allow_plain_http"):
        raise ConfigError(f"setting 'host': {host!r} is not a loopback address and TLS is not "
                          "configured. Set tls_cert_file and tls_key_file (HTTPS), or put the "
                          "TLS reverse proxy of conf/nginx/cloudfilm.conf in front and keep "
                          "host = 127.0.0.1; allow_plain_http = true allows plain HTTP on the "
                          "network explicitly.")


def settings_markdown() -> str:
    """The settings table as Markdown (README and tests use it)."""
    lines = ["| name | default | type | run time | help |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        where = ("security admin" if s.group == "security" else "system admin") \
            if s.runtime else "restart"
        lines.append(f"| `{s.name}` | `{s.default!r}` | {s.type.__name__} | {where} | "
                     f"{s.help} |")
    return "\n".join(lines)
