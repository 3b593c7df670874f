"""The client's address and scheme behind a trusted reverse proxy (setting trusted_proxies).

Tornado's own xheaders trust every peer; CloudFilm keeps them off and reads
X-Forwarded-For / X-Real-IP / X-Forwarded-Proto here, and only when the direct peer is one
of the configured proxies. `resolve` runs once per request before any handler (server/app.py
CloudFilmApp.find_handler), so everything that reads the address (audit, admin allow-list,
per-address limits, sessions, the access log) and the scheme (Secure cookies, HSTS) sees
the same answer; `client_ip` is the one reader.
"""
from __future__ import annotations

import functools
import ipaddress
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=8)
def parse_networks(text: str) -> tuple[Network, ...]:
    """'127.0.0.1/32, 10.0.0.0/8' → networks. Raises ValueError naming a bad entry."""
    out = []
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"not an address or network: {part!r}") from None
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address (an IPv4-mapped IPv6 one as IPv4), None for garbage. Cached: parsing one
    cost more than the rest of the request's routing under load (bench/load_bench.py)."""
    try:
        addr = ipaddress.ip_address((text or "").strip().split("%")[0])
    except ValueError:
        return None
    mapped = getattr(addr, "ipv4_mapped", None)
    return mapped or addr


def _trusted(addr, networks: tuple[Network, ...]) -> bool:
    return addr is not None and any(addr.version == n.version and addr in n for n in networks)


def forwarded_client(peer: str, headers: Any, networks: tuple[Network, ...]) -> str | None:
    """The client behind `peer` if `peer` is a trusted proxy: the right-most address of
    X-Forwarded-For that is not itself a trusted proxy (the left-most if all are), else
    X-Real-IP; None when the peer is not trusted or the headers name no valid address
    (a spoofed header from anyone else is never read)."""
    if not networks or not _trusted(_address(peer), networks):
        return None
    return _client_from(headers, networks)


def _client_from(headers: Any, networks: tuple[Network, ...]) -> str | None:
    hops = [h.strip() for v in headers.get_list("X-Forwarded-For") for h in v.split(",")]
    hops = [h for h in hops if h]
    client = None
    for hop in reversed(hops):
        addr = _address(hop)
        if addr is None:
            break                  # garbage: trust no further than the last good hop
        client = str(addr)
        if not _trusted(addr, networks):
            return client
    if client is not None:
        return client
    real = _address(headers.get("X-Real-IP", ""))
    return str(real) if real is not None else None


def forwarded_proto(peer: str, headers: Any, networks: tuple[Network, ...]) -> str | None:
    """'https' / 'http' from X-Forwarded-Proto (its last entry) of a trusted proxy."""
    if not networks or not _trusted(_address(peer), networks):
        return None
    return _proto_from(headers)


def _proto_from(headers: Any) -> str | None:
    proto = headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
    return proto if proto in ("http", "https") else None


@functools.lru_cache(maxsize=1024)
def _peer_trusted(peer: str, trusted_proxies: str) -> tuple[Network, ...]:
    """The trusted networks if `peer` is in one of them, else (): once per peer and setting."""
    try:
        networks = parse_networks(trusted_proxies)
    except ValueError:         # load_config refuses these; a bad override trusts no one
        return ()
    return networks if networks and _trusted(_address(peer), networks) else ()


def resolve(request, trusted_proxies: str) -> None:
    """Rewrite request.remote_ip / request.protocol from a trusted proxy's headers (once per
    request; the proxy's own address stays in request.proxy_peer)."""
    if getattr(request, "proxy_peer", None) is not None:
        return
    peer = request.remote_ip or ""
    request.proxy_peer = peer
    networks = _peer_trusted(peer, trusted_proxies or "")
    if not networks:
        return
    client = _client_from(request.headers, networks)
    if client is not None:
        request.remote_ip = client
    proto = _proto_from(request.headers)
    if proto is not None:
        request.protocol = proto


def client_ip(request) -> str:
    """The client's address: the one function every reader uses."""
    return request.remote_ip or ""
