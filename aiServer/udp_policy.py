"""Which UDP targets a client may Subscribe: its own address, unless the operator allows more.

Without this rule any client that reaches the TCP port could point the result stream
at a third party (a ~33,000x amplifier: 92 bytes of Subscribe bought 3 MB in 5 s).
So a target must be the subscribing connection's own peer address, as the server
sees it, and a port at or above ``udp.min_target_port``. Only a client that proved a
token (auth on) may target the networks in ``udp.allowed_target_cidrs`` too.
Unspecified (0.0.0.0/8), reserved (240.0.0.0/4, with 255.255.255.255) and multicast
addresses are never a client's own address; multicast is allowed only through a
listed CIDR that lies inside 224.0.0.0/4, so a broad ``0.0.0.0/0`` never opens it.
Static ``udp.targets`` are the operator's and are not checked here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from twisted.internet.interfaces import IAddress

from aiServer.session import Session
from netlib.udp_broadcast import InvalidTarget, normalise_host
from util.config import UdpConfig
from util.errors import ErrorCode, InvalidInput, ServiceError

MULTICAST = IPv4Network("224.0.0.0/4")
_NEVER = (IPv4Network("0.0.0.0/8"), IPv4Network("240.0.0.0/4"))


def peer_ipv4(peer: IAddress | None) -> str | None:
    """The IPv4 address of a TCP peer (an IPv4-mapped IPv6 one too); None for anything else."""
    host = getattr(peer, "host", None)
    if not isinstance(host, str):
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        return str(mapped) if mapped is not None else None
    return str(address)


@dataclass(frozen=True)
class TargetPolicy:
    """Checks a Subscribe target against the connection that asks for it.

    ``auth_required``: tokens are on, so ``session.authenticated`` means a token
    was proved (without auth every connection counts as authenticated, and gets
    only its own address).
    """

    allowed_cidrs: tuple[IPv4Network, ...] = ()
    min_port: int = 1024
    auth_required: bool = False

    @classmethod
    def from_config(cls, udp: UdpConfig, auth_required: bool) -> TargetPolicy:
        """The policy of the ``udp`` section (its CIDRs were validated at load)."""
        return cls(
            tuple(IPv4Network(c) for c in udp.allowed_target_cidrs),
            udp.min_target_port,
            auth_required,
        )

    def resolve(self, host: str, session: Session) -> str:
        """The IPv4 address ``host`` names; empty means the connection's own address.

        Raises InvalidInput for a malformed host, PERMISSION_DENIED when an empty host
        cannot be resolved (the connection is not IPv4).
        """
        if not host:
            own = peer_ipv4(session.peer)
            if own is None:
                raise ServiceError(
                    ErrorCode.PERMISSION_DENIED,
                    f"UDP results go to IPv4 addresses only; this connection's address "
                    f"{session.peer} is not one",
                )
            return own
        try:
            return normalise_host(host)
        except InvalidTarget as exc:
            raise InvalidInput(str(exc)) from None

    def check(self, host: str, port: int, session: Session) -> str:
        """The resolved target host if ``connection`` may subscribe ``host:port``.

        Raises InvalidInput (malformed host or port) or ServiceError PERMISSION_DENIED.
        """
        address = self.resolve(host, session)
        if not 1 <= port <= 65535:
            raise InvalidInput(f"UDP target port must be 1..65535, got {port}")
        if port < self.min_port:
            raise ServiceError(
                ErrorCode.PERMISSION_DENIED,
                f"UDP target port {port} is below udp.min_target_port={self.min_port}",
            )
        ip = IPv4Address(address)
        if any(ip in net for net in _NEVER):
            raise ServiceError(
                ErrorCode.PERMISSION_DENIED,
                f"UDP target {address} is an unspecified, reserved or broadcast address",
            )
        own = peer_ipv4(session.peer)
        if address == own or self._listed(ip, session):
            return address
        if ip in MULTICAST:
            why = "a multicast address (allowed only to a client authenticated by token, "
            why += "inside a udp.allowed_target_cidrs entry within 224.0.0.0/4)"
        else:
            why = f"not this connection's own address ({own or session.peer}); "
            why += "others need auth on, a token, and udp.allowed_target_cidrs"
        raise ServiceError(ErrorCode.PERMISSION_DENIED, f"UDP target {address} is {why}")

    def _listed(self, ip: IPv4Address, session: Session) -> bool:
        if not (self.auth_required and session.authenticated):
            return False
        multicast = ip in MULTICAST
        return any(
            ip in net and (not multicast or net.subnet_of(MULTICAST)) for net in self.allowed_cidrs
        )
