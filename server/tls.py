"""TLS for CloudFilm's own HTTPS listener, and self-signed certificates for trials.

Production: put the hospital's certificate chain and key in files outside the repository and
name them in tls_cert_file / tls_key_file; Tornado then serves HTTPS directly (TLS 1.2+,
forward-secret AEAD ciphers only) and every response carries HSTS. Alternatively keep CloudFilm
on 127.0.0.1 behind nginx (conf/nginx/cloudfilm.conf), which terminates TLS.

`./run.sh make-cert` makes a self-signed certificate with Debian's openssl for trials; browsers
warn about it, which is expected: replace it with one the hospital's CA signed.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import ssl
import subprocess  # nosec B404 - runs the system openssl with a fixed argument list
from pathlib import Path

log = logging.getLogger(__name__)

# Mozilla "intermediate" TLS 1.2 ciphers (TLS 1.3 suites are always on in OpenSSL).
TLS12_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
HSTS_VALUE = "max-age=31536000; includeSubDomains"


class TlsError(Exception):
    pass


def ssl_context(cert_file: str | os.PathLike, key_file: str | os.PathLike) -> ssl.SSLContext:
    """A server SSLContext from PEM files; raises TlsError saying what is wrong."""
    for label, f in (("tls_cert_file", cert_file), ("tls_key_file", key_file)):
        if not Path(f).is_file():
            raise TlsError(f"{label}: {f} does not exist (./run.sh make-cert makes a "
                           "self-signed pair for trials)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"cannot load the certificate {cert_file} with key {key_file}: "
                       f"{exc} (is the key the one of this certificate, both PEM?)") from None
    return ctx


def make_self_signed(cert_file: Path, key_file: Path, *, hosts: list[str],
                     days: int = 825) -> None:
    """Write a self-signed certificate (EC P-256) for `hosts` with Debian's openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TlsError("openssl is not installed (apt-get install openssl)")
    if not hosts:
        raise TlsError("name at least one host name or address")
    san = []
    for h in hosts:
        try:
            ipaddress.ip_address(h)
            san.append(f"IP:{h}")
        except ValueError:
            if not all(c.isalnum() or c in "-.*" for c in h):
                raise TlsError(f"{h!r} is not a host name or IP address") from None
            san.append(f"DNS:{h}")
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    tmp_key = key_file.with_name(key_file.name + ".tmp")
    old_umask = os.umask(0o077)
    try:
        subprocess.run(  # nosec B603 - fixed argv, no shell
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-sha256", "-nodes", "-days", str(int(days)), "-keyout", str(tmp_key),
             "-out", str(cert_file), "-subj", f"/O=CloudFilm trial/CN={hosts[0]}",
             "-addext", "subjectAltName=" + ",".join(san),
             "-addext", "keyUsage=critical,digitalSignature",
             "-addext", "extendedKeyUsage=serverAuth"],
            check=True, capture_output=True, timeout=60)
    except subprocess.CalledProcessError as exc:
        raise TlsError("openssl failed: " + exc.stderr.decode(errors="replace")[-400:]) from None
    finally:
        os.umask(old_umask)
    os.chmod(tmp_key, 0o600)
    os.replace(tmp_key, key_file)
    log.info("self-signed certificate written to %s (key %s)", cert_file, key_file)


def certificate_summary(cert_file: Path) -> str:
    """Subject, validity and names of a certificate (for the make-cert output)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return ""
    out = subprocess.run(  # nosec B603 - fixed argv, no shell
        [openssl, "x509", "-in", str(cert_file), "-noout", "-subject", "-enddate",
         "-ext", "subjectAltName", "-fingerprint", "-sha256"],
        capture_output=True, text=True, timeout=30)
    return out.stdout.strip()
