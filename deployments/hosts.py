"""Which machines the portal may be pointed at: the allowlist of engine hosts and publish addresses.

A workspace owner may set an environment's engine URL and publish address, but only to hosts the
portal's administrator listed: ``MLPORTAL_ENGINE_HOSTS`` (host names, IP addresses or networks in
CIDR form) and ``MLPORTAL_PUBLISH_ADDRESSES`` (default ``127.0.0.1``). A name is resolved and every
address it resolves to must be allowed. Loopback, link-local, unspecified (``0.0.0.0``, ``::``),
multicast and the portal's own addresses are refused unless listed themselves (an entry naming that
exact address, or a network made only of such addresses): a broad network such as ``10.0.0.0/8`` or
``0.0.0.0/0`` never lets them in. ``ssh://`` engines also need ``MLPORTAL_ENGINE_SSH=on``.

``guard_engine_url`` is installed into ``compute.engine`` (deployments/apps.py), so every
connection any part of the portal opens (worker, reconciler, a page) is checked at the moment it
is made, with the name resolved then and the connection pinned to the address that was checked.
The portal's own engine (``DOCKER_HOST``, empty engine URL) is the administrator's and always allowed.

``check_public_host`` is the rule for addresses the portal POSTs to on a user's behalf (outgoing
webhooks): any public address, but no private, loopback, link-local, reserved or own address unless
the administrator lists it (``MLPORTAL_WEBHOOK_HOSTS``), so a webhook cannot probe the portal's network.
"""
from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from urllib.parse import urlsplit

from django.conf import settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class NotAllowed(Exception):
    """The address is not on the portal's allowlist; ``str()`` says what to change."""


def _entries(values: list[str]) -> tuple[set[str], list[Network]]:
    names, networks = set(), []
    for value in values:
        value = value.strip().lower()
        if not value:
            continue
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            names.add(value.rstrip("."))
    return names, networks


def _special(address: Address) -> bool:
    return (address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast
            or address in own_addresses())


def own_addresses() -> set[Address]:
    """This host's addresses (every interface's IPv4 address, the host name's, loopback)."""
    found: set[Address] = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    try:
        for _, name in socket.if_nameindex():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
                except OSError:
                    continue
                found.add(ipaddress.ip_address(socket.inet_ntoa(packed[20:24])))
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(ipaddress.ip_address(info[4][0].split("%")[0]))
    except OSError:
        pass
    return found


def _resolve(host: str) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        raise NotAllowed(f"Host {host!r} does not resolve: use an address the portal allows.") from None
    return sorted({ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}, key=str)


def check_host(host: str, allowed: list[str], *, setting: str) -> list[Address]:
    """Returns the addresses of ``host`` when every one is allowed by ``allowed``; raises NotAllowed
    naming the setting an administrator would change."""
    host = host.strip().lower().rstrip(".").strip("[]")
    names, networks = _entries(allowed)
    listed = ", ".join(allowed) or "nothing"
    addresses = _resolve(host)
    for address in addresses:
        if host in names or str(address) in names:
            continue  # listed by name or exact address
        matching = [n for n in networks if address in n]
        if _special(address):
            if any(n.num_addresses == 1 or _special_network(n) for n in matching):
                continue
            raise NotAllowed(f"{host} is a loopback, link-local, unspecified or the portal's own address, which the "
                             f"portal refuses unless its administrator lists it in {setting} (it lists {listed}).")
        if matching:
            continue
        raise NotAllowed(f"{host} is not among the hosts this portal may use ({setting}: {listed}): ask the portal's "
                         "administrator to list it, or choose a listed one.")
    return addresses


def _special_network(network: Network) -> bool:
    """A network made only of loopback / link-local addresses (an administrator's explicit choice)."""
    return network.is_loopback or network.is_link_local


def check_engine_url(url: str) -> None:
    """Raises NotAllowed unless the portal may talk to the engine at ``url`` (empty: its own)."""
    if not url or url == (settings.MLPORTAL_DOCKER_URL or ""):
        return
    parts = urlsplit(url)
    if parts.scheme == "ssh" and not settings.MLPORTAL_ENGINE_SSH:
        raise NotAllowed("ssh:// engine URLs are off on this portal: its administrator may allow them "
                         "(MLPORTAL_ENGINE_SSH=on); use a tcp:// engine it lists in MLPORTAL_ENGINE_HOSTS.")
    if parts.scheme not in ("tcp", "ssh"):
        raise NotAllowed(f"Engine URL scheme {parts.scheme!r} is not allowed: use tcp:// (or ssh:// where allowed).")
    check_host(parts.hostname or "", settings.MLPORTAL_ENGINE_HOSTS, setting="MLPORTAL_ENGINE_HOSTS")


def check_publish_address(address: str) -> None:
    """Raises NotAllowed unless services may publish their ports on ``address``."""
    if not address:
        return
    check_host(address, settings.MLPORTAL_PUBLISH_ADDRESSES, setting="MLPORTAL_PUBLISH_ADDRESSES")


def engine_allowed(url: str | None) -> bool:
    try:
        check_engine_url(url or "")
    except NotAllowed:
        return False
    return True


def guard_engine_url(url: str | None) -> str | None:
    """The connection guard of compute.engine: returns the URL to connect to (a tcp:// URL pinned
    to the address that was checked, so a name cannot resolve elsewhere a moment later) or raises
    compute.engine.EngineNotAllowed."""
    from compute.engine import EngineNotAllowed

    if not url or url == (settings.MLPORTAL_DOCKER_URL or "") or url.startswith("unix://"):
        return url  # the portal's own engine, or a socket on this host (never an environment's: those are tcp/ssh)
    try:
        check_engine_url(url)
        parts = urlsplit(url)
        if parts.scheme == "tcp":
            address = _resolve(parts.hostname or "")[0]
            host = f"[{address}]" if address.version == 6 else str(address)
            return f"tcp://{host}:{parts.port}"
    except NotAllowed as exc:
        raise EngineNotAllowed(f"Not connecting to {url}: {exc}") from None
    return url


def check_public_host(host: str, allowed: list[str], *, setting: str, resolve: bool = True) -> list[Address]:
    """Returns the addresses of ``host`` when each is public or listed in ``allowed``; raises
    NotAllowed naming ``setting``. With ``resolve=False`` a name that does not resolve passes
    (checked again when the portal connects)."""
    host = host.strip().lower().rstrip(".").strip("[]")
    names, networks = _entries(allowed)
    try:
        addresses = _resolve(host)
    except NotAllowed:
        if resolve:
            raise
        return []
    for address in addresses:
        if host in names or str(address) in names or any(address in n for n in networks):
            continue
        if _special(address) or address.is_private or address.is_reserved or not address.is_global:
            raise NotAllowed(f"{host} is a private, loopback, link-local or the portal's own address ({address}), which "
                             f"the portal does not send to unless its administrator lists it in {setting}: use a public "
                             "address of the receiver.")
    return addresses
