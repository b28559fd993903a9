"""rtnetlink from Python: the links, IPv4 addresses and routes veneer's nat network sets, in-process.

The stdlib's `socket.AF_NETLINK` speaks to the kernel directly, where each `ip` command would cost a fork
and an exec (and `nsenter` another, in a machine's namespace). Messages are built by pure functions
(`*_message`), tested byte for byte; `Netlink` sends one request at a time and waits for the kernel's
answer (an ack, or a dump). Only what veneer needs: no general rtnetlink library.

Kernel reference: include/uapi/linux/{netlink,rtnetlink,if_link,if_addr}.h; `ip` (iproute2) sends the
same messages. Errors are `OSError` with the kernel's errno, naming the request.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

# netlink.h
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
# rtnetlink.h
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_TABLE = 15
# if_link.h, if_addr.h, if.h
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFF_UP = 0x1
NLA_F_NESTED = 0x8000

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_ATTR = struct.Struct("=HH")  # rtattr: len, type
CLONE_NEWNET = 0x40000000

StrPath = str | os.PathLike[str]


def _align(length: int) -> int:
    return (length + 3) & ~3


def attribute(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def _name(name: str) -> bytes:
    return name.encode() + b"\0"


def _mac(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def message(kind: int, flags: int, body: bytes, *, seq: int) -> bytes:
    """A netlink message: the header, then `body` (a family header and its attributes)."""
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body


def new_bridge_message(name: str, mac: str, *, seq: int) -> bytes:
    """`ip link add name NAME address MAC type bridge` (fails with EEXIST if NAME exists)."""
    linkinfo = attribute(IFLA_INFO_KIND, _name("bridge"))
    body = (
        _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        + attribute(IFLA_IFNAME, _name(name))
        + attribute(IFLA_ADDRESS, _mac(mac))
        + attribute(IFLA_LINKINFO | NLA_F_NESTED, linkinfo)
    )
    return message(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, seq=seq)


def set_link_message(index: int, *, up: bool = False, mac: str | None = None, seq: int) -> bytes:
    """`ip link set dev INDEX [address MAC] [up]`."""
    flags = IFF_UP if up else 0
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, flags)
    if mac is not None:
        body += attribute(IFLA_ADDRESS, _mac(mac))
    return message(RTM_NEWLINK, NLM_F_ACK, body, seq=seq)


def del_link_message(index: int, *, seq: int) -> bytes:
    """`ip link del dev INDEX`."""
    return message(RTM_DELLINK, NLM_F_ACK, _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0), seq=seq)


def get_link_message(name: str, *, seq: int) -> bytes:
    """`ip link show dev NAME`: one link, by name."""
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attribute(IFLA_IFNAME, _name(name))
    return message(RTM_GETLINK, NLM_F_ACK, body, seq=seq)


def address_message(kind: int, index: int, address: IPv4Interface, *, seq: int) -> bytes:
    """`ip addr replace` (RTM_NEWADDR) or `ip addr del` (RTM_DELADDR) of ADDRESS/PREFIX on INDEX."""
    flags = NLM_F_ACK | (NLM_F_CREATE | NLM_F_REPLACE if kind == RTM_NEWADDR else 0)
    packed = address.ip.packed
    body = (
        _IFADDR.pack(socket.AF_INET, address.network.prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        + attribute(IFA_LOCAL, packed)
        + attribute(IFA_ADDRESS, packed)
    )
    return message(kind, flags, body, seq=seq)


def default_route_message(index: int, gateway: IPv4Address, *, seq: int) -> bytes:
    """`ip route replace default via GATEWAY dev INDEX` in the main table."""
    body = (
        _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        + attribute(RTA_GATEWAY, gateway.packed)
        + attribute(RTA_OIF, struct.pack("=i", index))
    )
    return message(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, body, seq=seq)


def dump_message(kind: int, *, seq: int) -> bytes:
    """A dump of all IPv4 addresses (RTM_GETADDR) or routes of all tables (RTM_GETROUTE)."""
    if kind == RTM_GETADDR:
        return message(kind, NLM_F_DUMP, _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0), seq=seq)
    return message(kind, NLM_F_DUMP, _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0), seq=seq)


def attributes(data: bytes) -> dict[int, bytes]:
    """The rtattrs of a message's tail, by type (nested-flag cleared); the last of a type wins."""
    found = {}
    offset = 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        found[kind & ~NLA_F_NESTED] = data[offset + _ATTR.size : offset + length]
        offset += _align(length)
    return found


def messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """The (type, seq, body) of each netlink message in one datagram."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        yield kind, seq, data[offset + _HEADER.size : offset + length]
        offset += _align(length)


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    """An IPv4 address on a link."""

    index: int
    interface: IPv4Interface


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """An IPv4 route's destination and the link it leaves by (0: none, e.g. a blackhole)."""

    destination: IPv4Network
    index: int


def parse_address(body: bytes) -> Address | None:
    _family, prefixlen, _flags, _scope, index = _IFADDR.unpack_from(body)
    attrs = attributes(body[_IFADDR.size :])
    local = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if local is None or len(local) != 4:
        return None
    return Address(index=index, interface=IPv4Interface((IPv4Address(local), prefixlen)))


def parse_route(body: bytes) -> Route:
    _family, dst_len, *_rest = _RTMSG.unpack_from(body)
    attrs = attributes(body[_RTMSG.size :])
    dst = IPv4Address(attrs.get(RTA_DST, bytes(4)))
    oif = struct.unpack("=i", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
    return Route(destination=IPv4Network((dst, dst_len), strict=False), index=oif)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _enter_netns(fd: int, what: str) -> None:
    # os.setns() is Python 3.12's.
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno() or errno.EIO
        raise OSError(err, f"setns '{what}': {os.strerror(err)}")


def _route_socket(netns: StrPath | None) -> socket.socket:
    """A NETLINK_ROUTE socket in this process's network namespace, or in the one `netns` names (a file
    such as /proc/PID/ns/net or /run/netns/NAME).

    A socket stays in the namespace it was made in, so the thread enters the other namespace just for
    the socket() call and comes back (setns applies to the calling thread alone).
    """
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    theirs = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    ours = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _enter_netns(theirs, os.fspath(netns))
        try:
            return socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
            )
        finally:
            _enter_netns(ours, "/proc/thread-self/ns/net")
    finally:
        os.close(theirs)
        os.close(ours)


class Netlink:
    """A conversation with rtnetlink in one network namespace (ours, or the one the file `netns` names)."""

    def __init__(self, *, netns: StrPath | None = None) -> None:
        self._socket = _route_socket(netns)
        self._socket.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._socket.close()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _exchange(self, request: bytes, what: str) -> list[tuple[int, bytes]]:
        """Send a request; the (type, body) of its answers up to the ack or the end of the dump."""
        seq = _HEADER.unpack_from(request)[3]
        self._socket.send(request)
        answers: list[tuple[int, bytes]] = []
        while True:
            for kind, answer_seq, body in messages(self._socket.recv(65536)):
                if answer_seq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", body)
                    if code:
                        raise OSError(-code, f"{what}: {os.strerror(-code)}")
                    return answers
                if kind == NLMSG_DONE:
                    return answers
                answers.append((kind, body))

    def link_index(self, name: str) -> int | None:
        """The index of the link NAME, or None if there is none."""
        try:
            answers = self._exchange(get_link_message(name, seq=self._next_seq()), f"get link '{name}'")
        except OSError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        index: int = _IFINFO.unpack_from(answers[0][1])[2]
        return index

    def _index(self, name: str) -> int:
        index = self.link_index(name)
        if index is None:
            raise OSError(errno.ENODEV, f"link '{name}': {os.strerror(errno.ENODEV)}")
        return index

    def add_bridge(self, name: str, mac: str) -> bool:
        """Make the bridge NAME with MAC; False if a link of that name exists already."""
        try:
            self._exchange(new_bridge_message(name, mac, seq=self._next_seq()), f"add bridge '{name}'")
        except FileExistsError:
            return False
        return True

    def set_link(self, name: str, *, up: bool = False, mac: str | None = None) -> None:
        request = set_link_message(self._index(name), up=up, mac=mac, seq=self._next_seq())
        self._exchange(request, f"set link '{name}'")

    def delete_link(self, name: str) -> bool:
        """Delete the link NAME; False if there is none."""
        index = self.link_index(name)
        if index is None:
            return False
        try:
            self._exchange(del_link_message(index, seq=self._next_seq()), f"delete link '{name}'")
        except OSError as e:
            if e.errno == errno.ENODEV:  # removed meanwhile
                return False
            raise
        return True

    def addresses(self) -> list[Address]:
        """Every IPv4 address of the namespace."""
        answers = self._exchange(dump_message(RTM_GETADDR, seq=self._next_seq()), "list addresses")
        found = [parse_address(body) for kind, body in answers if kind == RTM_NEWADDR]
        return [a for a in found if a is not None]

    def routes(self) -> list[Route]:
        """Every IPv4 route of the namespace, of all tables."""
        answers = self._exchange(dump_message(RTM_GETROUTE, seq=self._next_seq()), "list routes")
        return [parse_route(body) for kind, body in answers if kind == RTM_NEWROUTE]

    def replace_addresses(self, name: str, address: IPv4Interface) -> None:
        """Make `address` the only IPv4 address of link NAME (a changed pool or machine address goes)."""
        index = self._index(name)
        for current in self.addresses():
            if current.index == index and current.interface != address:
                # Stale ones go first: deleting a primary address takes the secondaries of its subnet
                # along (unless promote_secondaries is set), so the new one would vanish with it.
                request = address_message(RTM_DELADDR, index, current.interface, seq=self._next_seq())
                try:
                    self._exchange(request, f"delete address {current.interface} of '{name}'")
                except OSError as e:
                    if e.errno != errno.EADDRNOTAVAIL:  # gone with its primary meanwhile
                        raise
        request = address_message(RTM_NEWADDR, index, address, seq=self._next_seq())
        self._exchange(request, f"set address {address} of '{name}'")

    def replace_default_route(self, name: str, gateway: IPv4Address) -> None:
        request = default_route_message(self._index(name), gateway, seq=self._next_seq())
        self._exchange(request, f"set the default route via {gateway} on '{name}'")
