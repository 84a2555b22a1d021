"""BGP-4 wire messages: OPEN, UPDATE, KEEPALIVE, NOTIFICATION, ROUTE-REFRESH.

Design
------
Each message is a small frozen dataclass.  ``bytes(msg)`` gives the whole message
(19-byte header included) and ``Cls.parse(data)`` reads one whole message back; the
module-level :func:`parse_message` checks the header and dispatches on the type octet.
A malformation that costs the session raises :class:`Notify` carrying the NOTIFICATION
(code, subcode, data) that RFC 4271 section 6 prescribes for it, so the session only has
to turn the exception into bytes and close.  UPDATE attribute errors follow RFC 7606
instead: the parsed :class:`Update` lists them in ``errors`` (treat-as-withdraw or
attribute-discard, per the table ``ATTR_RULES``) and the session stays up.  Nothing in
here ever raises anything else on bad input: the hypothesis tests feed random bytes to
the parsers to hold that line.

References:
- RFC 4271 (BGP-4): formats (section 4) and error handling (section 6).
- RFC 5492 (capabilities in OPEN, optional parameter type 2).
- RFC 6793 (4-octet AS numbers): the capability (code 65), AS_TRANS (23456) in the
  OPEN's 2-octet "My AS", and AS4_PATH for peers that only speak 2-octet AS_PATHs.
- RFC 4760 (multiprotocol BGP): MP_REACH_NLRI / MP_UNREACH_NLRI, used here for IPv6
  unicast (AFI 2, SAFI 1).
- RFC 2918 (ROUTE-REFRESH), RFC 4486 (CEASE subcodes), RFC 6608 (FSM error subcodes).
- RFC 7606 (revised UPDATE error handling), RFC 7607 (AS 0), RFC 9072 (extended
  optional parameters length), RFC 4724 (graceful restart capability, End-of-RIB).

Trade-offs
----------
- The width of AS numbers in AS_PATH depends on the session (both sides sent the 4-octet
  capability or not), so :meth:`Update.parse` takes ``asn4`` and the :class:`AsPath`
  attribute remembers the width it was read with; ``bytes()`` writes it back the same way.
- Attributes keep their flag octet, so a parsed attribute re-encodes to the same bytes
  (the extended-length bit is kept even when the value would fit in one octet).
- Capabilities are kept as one flat tuple; we write them one per optional parameter.
  RFC 5492 allows either grouping, so a peer's OPEN that packs several capabilities into
  one parameter parses fine but re-encodes with a different grouping.
- RFC 7606 even though this speaker installs nothing it receives: a session reset
  withdraws our VIPs from the router, so one bad attribute from a router must never cost
  the session (a real router's malformed AS_PATH made the session flap ~23 times a
  minute under the strict RFC 4271 rules).  A malformed attribute is dropped from
  ``attributes`` rather than kept raw, so such an UPDATE does not re-encode to its bytes.
- RFC 9072: an OPEN whose parameters exceed 255 octets is sent in the extended layout;
  one received in it parses like any other and re-encodes in the classic layout when it
  fits.  RFC 8654 extended messages (> 4096 octets) are not supported (rejected cleanly).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import ClassVar, Self

from maglev.errors import MaglevError

MARKER = b"\xff" * 16
HEADER_LEN = 19
MAX_LEN = 4096  # RFC 4271 4.1 (RFC 8654 extended messages not negotiated)
NOTIFICATION_DATA_SHOWN = 32  # octets of a NOTIFICATION's data in its text (logs, last_error)

# Message types (RFC 4271 4.1, RFC 2918).
OPEN, UPDATE, NOTIFICATION, KEEPALIVE, ROUTE_REFRESH = 1, 2, 3, 4, 5

AS_TRANS = 23456  # RFC 6793: stands in for a 4-octet ASN in 2-octet fields
BGP_VERSION = 4

# Address families (RFC 4760; IANA AFI/SAFI registries).
AFI_IPV4, AFI_IPV6 = 1, 2
SAFI_UNICAST = 1
IPV4_UNICAST = (AFI_IPV4, SAFI_UNICAST)
IPV6_UNICAST = (AFI_IPV6, SAFI_UNICAST)

# Capability codes (RFC 5492 registry).
CAP_MULTIPROTOCOL = 1
CAP_ROUTE_REFRESH = 2
CAP_GRACEFUL_RESTART = 64  # RFC 4724
CAP_FOUR_OCTET_AS = 65

# Graceful restart capability flags (RFC 4724 3; N bit from RFC 8538).
GR_RESTARTING = 0x8  # R: "I have just restarted" (in the 4-bit Restart Flags)
GR_NOTIFICATION = 0x4  # N: we support graceful NOTIFICATION (RFC 8538); not sent by us
GR_FORWARDING = 0x80  # F: forwarding state for this AFI/SAFI was kept across the restart
OPT_PARAM_CAPABILITIES = 2  # RFC 5492
OPT_PARAM_EXTENDED = 255  # RFC 9072: the "Non-Ext OP Type" marker

# NOTIFICATION error codes and the subcodes we send (RFC 4271 4.5, 6.x).
class Err:
    HEADER = 1
    OPEN = 2
    UPDATE = 3
    HOLD_TIMER = 4
    FSM = 5
    CEASE = 6
    ROUTE_REFRESH = 7  # RFC 7313

    # 1: message header
    NOT_SYNCHRONIZED = 1
    BAD_LENGTH = 2
    BAD_TYPE = 3
    # 2: OPEN
    UNSPECIFIC = 0
    UNSUPPORTED_VERSION = 1
    BAD_PEER_AS = 2
    BAD_BGP_ID = 3
    UNSUPPORTED_OPT_PARAM = 4
    UNACCEPTABLE_HOLD_TIME = 6
    UNSUPPORTED_CAPABILITY = 7
    # 3: UPDATE
    MALFORMED_ATTR_LIST = 1
    UNRECOGNIZED_WELL_KNOWN = 2
    MISSING_WELL_KNOWN = 3
    ATTR_FLAGS = 4
    ATTR_LENGTH = 5
    INVALID_ORIGIN = 6
    INVALID_NEXT_HOP = 8
    OPTIONAL_ATTR = 9
    INVALID_NETWORK = 10
    MALFORMED_AS_PATH = 11
    # 5: FSM (RFC 6608)
    FSM_IN_OPENSENT = 1
    FSM_IN_OPENCONFIRM = 2
    FSM_IN_ESTABLISHED = 3
    # 6: CEASE (RFC 4486)
    ADMIN_SHUTDOWN = 2
    PEER_DECONFIGURED = 3
    ADMIN_RESET = 4
    CONNECTION_REJECTED = 5
    OTHER_CONFIG_CHANGE = 6
    COLLISION = 7


ERROR_NAMES = {
    1: "Message Header Error",
    2: "OPEN Message Error",
    3: "UPDATE Message Error",
    4: "Hold Timer Expired",
    5: "Finite State Machine Error",
    6: "Cease",
    7: "ROUTE-REFRESH Message Error",
}


class Notify(MaglevError, ValueError):
    """A protocol error: the NOTIFICATION to send is ``Notification(code, subcode, data)``.

    ``reason`` is a human sentence for logs; it never goes on the wire.
    """

    def __init__(self, code: int, subcode: int, data: bytes = b"", reason: str = ""):
        self.code = code
        self.subcode = subcode
        self.data = bytes(data)
        self.reason = reason
        name = ERROR_NAMES.get(code, f"error {code}")
        super().__init__(f"{name} ({code}/{subcode}){': ' + reason if reason else ''}")

    def notification(self) -> Notification:
        return Notification(self.code, self.subcode, self.data)


def _header(msg_type: int, body: bytes) -> bytes:
    length = HEADER_LEN + len(body)
    if length > MAX_LEN:
        raise ValueError(f"BGP message of {length} octets exceeds the {MAX_LEN}-octet limit")
    return MARKER + struct.pack("!HB", length, msg_type) + body


# Minimum total length of each type (RFC 4271 4.2-4.5; RFC 2918 for ROUTE-REFRESH).
_MIN_LEN = {OPEN: 29, UPDATE: 23, NOTIFICATION: 21, KEEPALIVE: 19, ROUTE_REFRESH: 23}


def check_header(header: bytes) -> tuple[int, int]:
    """Validate the 19-octet header (RFC 4271 6.1); return (total length, type)."""
    if len(header) < HEADER_LEN:
        raise Notify(Err.HEADER, Err.BAD_LENGTH, b"", f"message of {len(header)} octets is shorter than the header")
    if header[:16] != MARKER:
        raise Notify(Err.HEADER, Err.NOT_SYNCHRONIZED, b"", "marker is not all ones")
    length, msg_type = struct.unpack_from("!HB", header, 16)
    if msg_type not in _MIN_LEN:
        raise Notify(Err.HEADER, Err.BAD_TYPE, bytes([msg_type]), f"unknown message type {msg_type}")
    bad = length < HEADER_LEN or length > MAX_LEN or length < _MIN_LEN[msg_type]
    if msg_type == KEEPALIVE and length != HEADER_LEN:
        bad = True
    if msg_type == ROUTE_REFRESH and length != 23:
        bad = True
    if bad:
        raise Notify(
            Err.HEADER, Err.BAD_LENGTH, header[16:18], f"length {length} is invalid for message type {msg_type}"
        )
    return length, msg_type


def _body(data: bytes, expected_type: int) -> bytes:
    length, msg_type = check_header(data)
    if msg_type != expected_type:
        raise Notify(Err.HEADER, Err.BAD_TYPE, bytes([msg_type]), f"expected type {expected_type}, got {msg_type}")
    if len(data) != length:
        raise Notify(
            Err.HEADER, Err.BAD_LENGTH, data[16:18], f"header says {length} octets but {len(data)} were given"
        )
    return data[HEADER_LEN:]


# --------------------------------------------------------------------------- OPEN


@dataclass(frozen=True)
class Capability:
    """One capability (RFC 5492): code and raw value."""

    code: int
    value: bytes = b""

    @classmethod
    def multiprotocol(cls, afi: int, safi: int) -> Capability:
        return cls(CAP_MULTIPROTOCOL, struct.pack("!HBB", afi, 0, safi))

    @classmethod
    def four_octet_as(cls, asn: int) -> Capability:
        return cls(CAP_FOUR_OCTET_AS, struct.pack("!I", asn))

    @classmethod
    def route_refresh(cls) -> Capability:
        return cls(CAP_ROUTE_REFRESH)

    @classmethod
    def graceful_restart(
        cls, restart_time: int, families: tuple[tuple[int, int], ...], *, restarting: bool = False, forwarding: bool = True
    ) -> Capability:
        """RFC 4724 3: 4 flag bits + 12-bit restart time, then (AFI, SAFI, flags) per family."""
        if not 0 <= restart_time <= 4095:
            raise ValueError(f"graceful restart time {restart_time} is outside 0..4095 s")
        head = ((GR_RESTARTING if restarting else 0) << 12) | restart_time
        tail = b"".join(struct.pack("!HBB", a, s, GR_FORWARDING if forwarding else 0) for a, s in families)
        return cls(CAP_GRACEFUL_RESTART, struct.pack("!H", head) + tail)

    def __bytes__(self) -> bytes:
        if len(self.value) > 255:
            raise ValueError(f"capability {self.code} value is longer than 255 octets")
        return bytes([self.code, len(self.value)]) + self.value


@dataclass(frozen=True)
class Open:
    asn: int  # the real ASN (the 4-octet capability carries it when above 65535)
    hold_time: int
    router_id: str
    capabilities: tuple[Capability, ...] = ()
    version: int = BGP_VERSION
    my_as: int = -1  # the 2-octet field as sent; -1 = derive (asn or AS_TRANS)

    TYPE: ClassVar[int] = OPEN

    def __post_init__(self) -> None:
        if self.my_as == -1:
            object.__setattr__(self, "my_as", self.asn if self.asn <= 0xFFFF else AS_TRANS)

    @classmethod
    def build(
        cls,
        asn: int,
        hold_time: int,
        router_id: str,
        families: tuple[tuple[int, int], ...] = (IPV4_UNICAST,),
        *,
        restart_time: int | None = None,
        restarting: bool = False,
    ) -> Open:
        """The OPEN we send: multiprotocol families, route refresh, 4-octet ASN, and the
        graceful restart capability when ``restart_time`` is given (RFC 4724)."""
        caps = tuple(Capability.multiprotocol(a, s) for a, s in families)
        caps += (Capability.route_refresh(),)
        if restart_time is not None:
            caps += (Capability.graceful_restart(restart_time, families, restarting=restarting),)
        caps += (Capability.four_octet_as(asn),)
        return cls(asn=asn, hold_time=hold_time, router_id=router_id, capabilities=caps)

    @property
    def graceful_restart(self) -> tuple[int, int, dict[tuple[int, int], int]] | None:
        """(restart flags, restart time, {(afi, safi): flags}) from the GR capability, or
        None when the peer did not send one (or sent one too short to read)."""
        for c in self.capabilities:
            if c.code == CAP_GRACEFUL_RESTART and len(c.value) >= 2:
                head = struct.unpack_from("!H", c.value)[0]
                fams = {}
                for k in range(2, len(c.value) - 3, 4):
                    afi, safi, flags = struct.unpack_from("!HBB", c.value, k)
                    fams[(afi, safi)] = flags
                return head >> 12, head & 0x0FFF, fams
        return None

    @property
    def asn4(self) -> int | None:
        """The ASN from the 4-octet capability, or None if the peer did not send it."""
        for c in self.capabilities:
            if c.code == CAP_FOUR_OCTET_AS and len(c.value) == 4:
                return int.from_bytes(c.value, "big")
        return None

    @property
    def families(self) -> frozenset[tuple[int, int]]:
        """Advertised (AFI, SAFI) pairs; IPv4 unicast is implied when none is listed."""
        fams = set()
        seen_mp = False
        for c in self.capabilities:
            if c.code == CAP_MULTIPROTOCOL and len(c.value) == 4:
                seen_mp = True
                afi, _, safi = struct.unpack("!HBB", c.value)
                fams.add((afi, safi))
        return frozenset(fams) if seen_mp else frozenset({IPV4_UNICAST})

    def has(self, code: int) -> bool:
        return any(c.code == code for c in self.capabilities)

    def __bytes__(self) -> bytes:
        caps = [bytes(c) for c in self.capabilities]
        params = b"".join(bytes([OPT_PARAM_CAPABILITIES, len(c)]) + c for c in caps)
        if len(params) > 255:
            # RFC 9072: Non-Ext OP Len 255, Non-Ext OP Type 255, a 2-octet Extended Opt.
            # Parm. Length, and 2-octet lengths on every parameter.
            params = b"".join(struct.pack("!BH", OPT_PARAM_CAPABILITIES, len(c)) + c for c in caps)
            if len(params) > 0xFFFF:
                raise ValueError("OPEN optional parameters exceed 65535 octets")
            plen = 255
            params = bytes([OPT_PARAM_EXTENDED]) + struct.pack("!H", len(params)) + params
        else:
            plen = len(params)
        body = struct.pack(
            "!BHH4sB",
            self.version,
            self.my_as,
            self.hold_time,
            ipaddress.IPv4Address(self.router_id).packed,
            plen,
        )
        return _header(OPEN, body + params)

    @classmethod
    def parse(cls, data: bytes) -> Open:
        body = _body(data, OPEN)
        version, my_as, hold, rid, plen = struct.unpack_from("!BHH4sB", body)
        if version != BGP_VERSION:
            # Data: the largest version we support (RFC 4271 6.2).
            raise Notify(
                Err.OPEN, Err.UNSUPPORTED_VERSION, struct.pack("!H", BGP_VERSION), f"BGP version {version}"
            )
        extended = plen == 255 and len(body) > 10 and body[10] == OPT_PARAM_EXTENDED
        if extended:
            # RFC 9072 3: the real length is the 2 octets after the 255/255 marker, and
            # each parameter's length field is 2 octets too.
            if len(body) < 13:
                raise Notify(Err.OPEN, Err.UNSPECIFIC, b"", "extended optional parameters length truncated")
            plen = struct.unpack_from("!H", body, 11)[0]
            params = body[13:]
        else:
            params = body[10:]
        if len(params) != plen:
            raise Notify(
                Err.OPEN, Err.UNSPECIFIC, b"", f"optional parameters length {plen} but {len(params)} octets follow"
            )
        caps: list[Capability] = []
        hl = 3 if extended else 2
        i = 0
        while i < len(params):
            if i + hl > len(params):
                raise Notify(Err.OPEN, Err.UNSPECIFIC, b"", "truncated optional parameter")
            ptype = params[i]
            pl = struct.unpack_from("!H", params, i + 1)[0] if extended else params[i + 1]
            pval = params[i + hl : i + hl + pl]
            if len(pval) != pl:
                raise Notify(Err.OPEN, Err.UNSPECIFIC, b"", "optional parameter overruns the message")
            if ptype != OPT_PARAM_CAPABILITIES:
                raise Notify(Err.OPEN, Err.UNSUPPORTED_OPT_PARAM, b"", f"optional parameter type {ptype}")
            j = 0
            while j < len(pval):
                if j + 2 > len(pval):
                    raise Notify(Err.OPEN, Err.UNSPECIFIC, b"", "truncated capability")
                code, cl = pval[j], pval[j + 1]
                cval = pval[j + 2 : j + 2 + cl]
                if len(cval) != cl:
                    raise Notify(Err.OPEN, Err.UNSPECIFIC, b"", "capability overruns its parameter")
                caps.append(Capability(code, bytes(cval)))
                j += 2 + cl
            i += hl + pl
        if hold in (1, 2):
            raise Notify(Err.OPEN, Err.UNACCEPTABLE_HOLD_TIME, b"", f"hold time {hold} (must be 0 or >= 3)")
        router_id = str(ipaddress.IPv4Address(rid))
        if router_id == "0.0.0.0":
            raise Notify(Err.OPEN, Err.BAD_BGP_ID, b"", "BGP identifier 0.0.0.0")
        four = [c for c in caps if c.code == CAP_FOUR_OCTET_AS]
        if any(len(c.value) != 4 for c in four):
            raise Notify(Err.OPEN, Err.UNSPECIFIC, b"", "4-octet AS capability value is not 4 octets")
        asn = int.from_bytes(four[0].value, "big") if four else my_as
        if asn == 0:
            raise Notify(Err.OPEN, Err.BAD_PEER_AS, b"", "AS 0 (RFC 7607)")
        return cls(asn=asn, hold_time=hold, router_id=router_id, capabilities=tuple(caps), version=version, my_as=my_as)


# --------------------------------------------------------------------------- KEEPALIVE, NOTIFICATION, ROUTE-REFRESH


@dataclass(frozen=True)
class Keepalive:
    TYPE: ClassVar[int] = KEEPALIVE

    def __bytes__(self) -> bytes:
        return _header(KEEPALIVE, b"")

    @classmethod
    def parse(cls, data: bytes) -> Keepalive:
        _body(data, KEEPALIVE)
        return cls()


@dataclass(frozen=True)
class Notification:
    code: int
    subcode: int = 0
    data: bytes = b""

    TYPE: ClassVar[int] = NOTIFICATION

    def __bytes__(self) -> bytes:
        return _header(NOTIFICATION, bytes([self.code, self.subcode]) + self.data)

    @classmethod
    def parse(cls, data: bytes) -> Notification:
        body = _body(data, NOTIFICATION)
        return cls(body[0], body[1], bytes(body[2:]))

    def __str__(self) -> str:
        name = ERROR_NAMES.get(self.code, f"error {self.code}")
        text = f"{name} ({self.code}/{self.subcode})"
        if self.code == Err.CEASE and self.subcode in (Err.ADMIN_SHUTDOWN, Err.ADMIN_RESET) and self.data:
            # RFC 8203/9003 shutdown communication: a length octet then UTF-8 text.
            n = self.data[0]
            msg = self.data[1 : 1 + n].decode("utf-8", "replace")
            if msg:
                # The peer's words go into our logs, events and state: no control
                # characters (a newline would forge a log line, ESC a terminal's colours).
                msg = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in msg)
                text += f': "{msg}"'
        elif self.data:
            # Bounded: a hostile peer's NOTIFICATION may carry 4 KB of data.
            more = f"... ({len(self.data)} octets)" if len(self.data) > NOTIFICATION_DATA_SHOWN else ""
            text += f" data={self.data[:NOTIFICATION_DATA_SHOWN].hex()}{more}"
        return text


@dataclass(frozen=True)
class RouteRefresh:
    afi: int
    safi: int
    subtype: int = 0  # RFC 7313; 0 = normal request

    TYPE: ClassVar[int] = ROUTE_REFRESH

    def __bytes__(self) -> bytes:
        return _header(ROUTE_REFRESH, struct.pack("!HBB", self.afi, self.subtype, self.safi))

    @classmethod
    def parse(cls, data: bytes) -> RouteRefresh:
        afi, subtype, safi = struct.unpack("!HBB", _body(data, ROUTE_REFRESH))
        return cls(afi, safi, subtype)


# --------------------------------------------------------------------------- path attributes

# Flag bits (RFC 4271 4.3).
F_OPTIONAL, F_TRANSITIVE, F_PARTIAL, F_EXTENDED = 0x80, 0x40, 0x20, 0x10

# Type codes.
A_ORIGIN, A_AS_PATH, A_NEXT_HOP, A_MED, A_LOCAL_PREF = 1, 2, 3, 4, 5
A_ATOMIC_AGGREGATE, A_AGGREGATOR = 6, 7
A_MP_REACH, A_MP_UNREACH = 14, 15
A_AS4_PATH, A_AS4_AGGREGATOR = 17, 18
WELL_KNOWN = {A_ORIGIN, A_AS_PATH, A_NEXT_HOP, A_LOCAL_PREF, A_ATOMIC_AGGREGATE}

ORIGIN_IGP, ORIGIN_EGP, ORIGIN_INCOMPLETE = 0, 1, 2
AS_SET, AS_SEQUENCE, AS_CONFED_SEQUENCE, AS_CONFED_SET = 1, 2, 3, 4

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network


def encode_prefixes(prefixes: tuple[Prefix, ...]) -> bytes:
    """NLRI encoding (RFC 4271 4.3): length in bits, then the fewest octets holding it."""
    out = bytearray()
    for p in prefixes:
        n = p.prefixlen
        out.append(n)
        out += p.network_address.packed[: (n + 7) // 8]
    return bytes(out)


def decode_prefixes(data: bytes, version: int, err: tuple[int, int]) -> tuple[Prefix, ...]:
    """Inverse of :func:`encode_prefixes`; ``err`` is the (code, subcode) for bad input:
    a length above the family's width, or a prefix that overruns the field (RFC 7606 5.3).

    Bits set beyond the prefix length in the last octet are cleared, not an error: RFC
    4271 4.3 says "the value of trailing bits is irrelevant" (before 2026-12-08 they reset
    the session with 3/10: a legal UPDATE made the session flap).
    """
    width = 32 if version == 4 else 128
    size = width // 8
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    out: list[Prefix] = []
    i = 0
    while i < len(data):
        n = data[i]
        nbytes = (n + 7) // 8
        if n > width:
            raise Notify(*err, b"", f"prefix length {n} exceeds {width}")
        raw = data[i + 1 : i + 1 + nbytes]
        if len(raw) != nbytes:
            raise Notify(*err, b"", "prefix overruns the field")
        out.append(cls((raw + bytes(size - nbytes), n), strict=False))
        i += 1 + nbytes
    return tuple(out)


@dataclass(frozen=True)
class Origin:
    value: int = ORIGIN_IGP
    flags: int = F_TRANSITIVE
    TYPE: ClassVar[int] = A_ORIGIN

    def value_bytes(self) -> bytes:
        return bytes([self.value])

    @classmethod
    def decode(cls, flags: int, v: bytes, asn4: bool) -> Origin:
        if len(v) != 1:
            raise Notify(Err.UPDATE, Err.ATTR_LENGTH, b"", "ORIGIN length is not 1")
        if v[0] > ORIGIN_INCOMPLETE:
            raise Notify(Err.UPDATE, Err.INVALID_ORIGIN, b"", f"ORIGIN value {v[0]}")
        return cls(v[0], flags)


def _encode_segments(segments: tuple[tuple[int, tuple[int, ...]], ...], asn4: bool) -> bytes:
    out = bytearray()
    fmt = "!I" if asn4 else "!H"
    for seg_type, asns in segments:
        if not 1 <= len(asns) <= 255:
            raise ValueError("an AS_PATH segment holds 1..255 AS numbers")
        out += bytes([seg_type, len(asns)])
        for a in asns:
            out += struct.pack(fmt, a)
    return bytes(out)


def _decode_segments(v: bytes, asn4: bool, err: tuple[int, int], name: str) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """AS_PATH / AS4_PATH segments.  Malformed (RFC 7606 7.2, RFC 7607): an unknown
    segment type, a segment that overruns the attribute, a lone octet left over (no room
    for a segment header), a segment length of zero, or AS 0 anywhere."""
    size = 4 if asn4 else 2
    segs = []
    i = 0
    while i < len(v):
        if i + 2 > len(v):
            raise Notify(*err, b"", f"{name}: {len(v) - i} octet left after the last segment (no room for a segment header)")
        seg_type, count = v[i], v[i + 1]
        if seg_type not in (AS_SET, AS_SEQUENCE, AS_CONFED_SEQUENCE, AS_CONFED_SET):
            raise Notify(*err, b"", f"{name}: unknown segment type {seg_type}")
        if count == 0:
            raise Notify(*err, b"", f"{name}: segment of type {seg_type} with zero AS numbers")
        raw = v[i + 2 : i + 2 + count * size]
        if len(raw) != count * size:
            raise Notify(
                *err, b"", f"{name}: segment of {count} {size}-octet AS numbers overruns the attribute ({len(raw)} octets left)"
            )
        asns = struct.unpack(f"!{count}{'I' if asn4 else 'H'}", raw)
        if 0 in asns:
            raise Notify(*err, b"", f"{name}: AS 0 (RFC 7607)")
        segs.append((seg_type, tuple(asns)))
        i += 2 + count * size
    return tuple(segs)


Segments = tuple[tuple[int, tuple[int, ...]], ...]
CONFED_SEGMENTS = (AS_CONFED_SEQUENCE, AS_CONFED_SET)


def path_length(segments: Segments) -> int:
    """RFC 4271 9.1.2.2 / RFC 6793 4.2.3 counting: an AS_SET counts as one, the
    confederation segments count as zero."""
    n = 0
    for seg_type, asns in segments:
        if seg_type == AS_SEQUENCE:
            n += len(asns)
        elif seg_type == AS_SET:
            n += 1
    return n


def merge_as4_path(as_path: Segments, as4_path: Segments) -> Segments:
    """RFC 6793 4.2.3: the leading part of the 2-octet AS_PATH (AS_TRANS stand-ins and
    all) that AS4_PATH does not cover, followed by AS4_PATH.  When AS_PATH counts fewer
    AS numbers than AS4_PATH, AS4_PATH is ignored (a 2-octet speaker on the way prepended
    without updating it, or it is bogus) and AS_PATH is the path."""
    need = path_length(as_path) - path_length(as4_path)
    if need < 0:
        return as_path
    head: list[tuple[int, tuple[int, ...]]] = []
    for seg_type, asns in as_path:
        if seg_type in CONFED_SEGMENTS:  # leading confederation segments stay in front
            head.append((seg_type, asns))
            continue
        if need == 0:
            break
        if seg_type == AS_SET:
            head.append((seg_type, asns))
            need -= 1
        else:
            take = asns[:need]
            head.append((seg_type, take))
            need -= len(take)
    out = head + list(as4_path)
    # Join an AS_SEQUENCE cut from AS_PATH to an AS4_PATH that starts with one.
    merged: list[tuple[int, tuple[int, ...]]] = []
    for seg in out:
        if merged and seg[0] == AS_SEQUENCE == merged[-1][0] and len(merged[-1][1]) + len(seg[1]) <= 255:
            merged[-1] = (AS_SEQUENCE, merged[-1][1] + seg[1])
        else:
            merged.append(seg)
    return tuple(merged)


@dataclass(frozen=True)
class AsPath:
    segments: Segments = ()
    asn4: bool = True  # wire width of the AS numbers (negotiated per session)
    flags: int = F_TRANSITIVE
    TYPE: ClassVar[int] = A_AS_PATH

    @classmethod
    def sequence(cls, asns: tuple[int, ...], asn4: bool = True) -> AsPath:
        return cls(((AS_SEQUENCE, tuple(asns)),) if asns else (), asn4)

    def value_bytes(self) -> bytes:
        return _encode_segments(self.segments, self.asn4)

    @classmethod
    def decode(cls, flags: int, v: bytes, asn4: bool) -> AsPath:
        return cls(_decode_segments(v, asn4, (Err.UPDATE, Err.MALFORMED_AS_PATH), "AS_PATH"), asn4, flags)


@dataclass(frozen=True)
class As4Path:
    """RFC 6793: the true path beside a 2-octet AS_PATH that has AS_TRANS in it."""

    segments: Segments = ()
    flags: int = F_OPTIONAL | F_TRANSITIVE
    TYPE: ClassVar[int] = A_AS4_PATH

    def value_bytes(self) -> bytes:
        return _encode_segments(self.segments, True)

    @classmethod
    def decode(cls, flags: int, v: bytes, asn4: bool) -> As4Path:
        return cls(_decode_segments(v, True, (Err.UPDATE, Err.OPTIONAL_ATTR), "AS4_PATH"), flags)


@dataclass(frozen=True)
class NextHop:
    address: str
    flags: int = F_TRANSITIVE
    TYPE: ClassVar[int] = A_NEXT_HOP

    def value_bytes(self) -> bytes:
        return ipaddress.IPv4Address(self.address).packed

    @classmethod
    def decode(cls, flags: int, v: bytes, asn4: bool) -> NextHop:
        if len(v) != 4:
            raise Notify(Err.UPDATE, Err.ATTR_LENGTH, b"", f"NEXT_HOP length is {len(v)}, not 4")
        ip = ipaddress.IPv4Address(v)
        # 0.0.0.0, class D/E and the limited broadcast are never a usable next hop.
        if ip.is_unspecified or ip.is_multicast or int(ip) >= 0xF0000000:
            raise Notify(Err.UPDATE, Err.INVALID_NEXT_HOP, _attr_bytes(flags, A_NEXT_HOP, v), f"NEXT_HOP {ip}")
        return cls(str(ip), flags)


@dataclass(frozen=True)
class _U32Attr:
    value: int
    flags: int = 0
    TYPE: ClassVar[int] = 0
    NAME: ClassVar[str] = ""

    def value_bytes(self) -> bytes:
        return struct.pack("!I", self.value)

    @classmethod
    def decode(cls, flags: int, v: bytes, asn4: bool) -> Self:
        if len(v) != 4:
            raise Notify(
                Err.UPDATE, Err.ATTR_LENGTH, _attr_bytes(flags, cls.TYPE, v), f"{cls.NAME} length is {len(v)}, not 4"
            )
        return cls(struct.unpack("!I", v)[0], flags)


@dataclass(frozen=True)
class Med(_U32Attr):
    flags: int = F_OPTIONAL
    TYPE: ClassVar[int] = A_MED
    NAME: ClassVar[str] = "MULTI_EXIT_DISC"


@dataclass(frozen=True)
class LocalPref(_U32Attr):
    flags: int = F_TRANSITIVE
    TYPE: ClassVar[int] = A_LOCAL_PREF
    NAME: ClassVar[str] = "LOCAL_PREF"


@dataclass(frozen=True)
class AtomicAggregate:
    flags: int = F_TRANSITIVE
    TYPE: ClassVar[int] = A_ATOMIC_AGGREGATE

    def value_bytes(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, flags: int, v: bytes, asn4: bool) -> AtomicAggregate:
        if v:
            raise Notify(
                Err.UPDATE, Err.ATTR_LENGTH, _attr_bytes(flags, A_ATOMIC_AGGREGATE, v), f"ATOMIC_AGGREGATE length is {len(v)}, not 0"
            )
        return cls(flags)


@dataclass(frozen=True)
class Aggregator:
    asn: int
    address: str
    asn4: bool = True
    flags: int = F_OPTIONAL | F_TRANSITIVE
    TYPE: ClassVar[int] = A_AGGREGATOR

    def value_bytes(self) -> bytes:
        return struct.pack("!I" if self.asn4 else "!H", self.asn) + ipaddress.IPv4Address(self.address).packed

    @classmethod
    def decode(cls, flags: int, v: bytes, asn4: bool) -> Aggregator:
        if len(v) != (8 if asn4 else 6):
            raise Notify(
                Err.UPDATE, Err.ATTR_LENGTH, _attr_bytes(flags, A_AGGREGATOR, v), f"AGGREGATOR length is {len(v)}, not {8 if asn4 else 6}"
            )
        n = 4 if asn4 else 2
        asn = int.from_bytes(v[:n], "big")
        if asn == 0:
            raise Notify(Err.UPDATE, Err.OPTIONAL_ATTR, _attr_bytes(flags, A_AGGREGATOR, v), "AGGREGATOR AS 0 (RFC 7607)")
        return cls(asn, str(ipaddress.IPv4Address(v[n:])), asn4, flags)


def _families_prefix_version(afi: int) -> int:
    return 4 if afi == AFI_IPV4 else 6


@dataclass(frozen=True)
class MpReach:
    """MP_REACH_NLRI (RFC 4760 3) for IPv4/IPv6 unicast."""

    afi: int
    safi: int
    next_hops: tuple[str, ...]  # one global address, optionally followed by a link-local (IPv6)
    nlri: tuple[Prefix, ...]
    flags: int = F_OPTIONAL
    TYPE: ClassVar[int] = A_MP_REACH

    def value_bytes(self) -> bytes:
        nh = b"".join(ipaddress.ip_address(a).packed for a in self.next_hops)
        return struct.pack("!HBB", self.afi, self.safi, len(nh)) + nh + b"\x00" + encode_prefixes(self.nlri)

    @classmethod
    def decode(cls, flags: int, v: bytes, asn4: bool) -> MpReach | Unknown:
        err = (Err.UPDATE, Err.OPTIONAL_ATTR)
        if len(v) < 5:
            raise Notify(*err, b"", "MP_REACH_NLRI shorter than 5 octets")
        afi, safi, nhl = struct.unpack_from("!HBB", v)
        if (afi, safi) not in (IPV4_UNICAST, IPV6_UNICAST):
            # A family we never negotiated: keep it opaque rather than guess its layout.
            return Unknown(A_MP_REACH, flags, bytes(v))
        nh = v[4 : 4 + nhl]
        if len(nh) != nhl or len(v) < 5 + nhl:
            raise Notify(*err, b"", "MP_REACH_NLRI next hop overruns the attribute")
        size = 4 if afi == AFI_IPV4 else 16
        if nhl not in (size, 2 * size) or (afi == AFI_IPV4 and nhl != 4):
            raise Notify(*err, b"", f"MP_REACH_NLRI next hop length {nhl} for AFI {afi}")
        hops = tuple(str(ipaddress.ip_address(bytes(nh[k : k + size]))) for k in range(0, nhl, size))
        nlri = decode_prefixes(bytes(v[5 + nhl :]), _families_prefix_version(afi), err)
        return cls(afi, safi, hops, nlri, flags)


@dataclass(frozen=True)
class MpUnreach:
    """MP_UNREACH_NLRI (RFC 4760 4); an empty one is the End-of-RIB marker (RFC 4724)."""

    afi: int
    safi: int
    withdrawn: tuple[Prefix, ...]
    flags: int = F_OPTIONAL
    TYPE: ClassVar[int] = A_MP_UNREACH

    def value_bytes(self) -> bytes:
        return struct.pack("!HB", self.afi, self.safi) + encode_prefixes(self.withdrawn)

    @classmethod
    def decode(cls, flags: int, v: bytes, asn4: bool) -> MpUnreach | Unknown:
        if len(v) < 3:
            raise Notify(Err.UPDATE, Err.OPTIONAL_ATTR, b"", "MP_UNREACH_NLRI shorter than 3 octets")
        afi, safi = struct.unpack_from("!HB", v)
        if (afi, safi) not in (IPV4_UNICAST, IPV6_UNICAST):
            return Unknown(A_MP_UNREACH, flags, bytes(v))
        prefixes = decode_prefixes(bytes(v[3:]), _families_prefix_version(afi), (Err.UPDATE, Err.OPTIONAL_ATTR))
        return cls(afi, safi, prefixes, flags)


@dataclass(frozen=True)
class Unknown:
    """Any attribute we do not interpret (communities, AS4_AGGREGATOR, ...), kept raw."""

    type_code: int
    flags: int
    value: bytes

    @property
    def TYPE(self) -> int:  # same spelling as the typed attributes' ClassVar
        return self.type_code

    def value_bytes(self) -> bytes:
        return self.value


Attribute = (
    Origin | AsPath | As4Path | NextHop | Med | LocalPref | AtomicAggregate | Aggregator | MpReach | MpUnreach | Unknown
)

_DECODERS = {
    c.TYPE: c for c in (Origin, AsPath, As4Path, NextHop, Med, LocalPref, AtomicAggregate, Aggregator, MpReach, MpUnreach)
}

# --------------------------------------------------------------------------- RFC 7606 error handling

# What an attribute error costs (RFC 7606 2): the whole session, the routes of this
# UPDATE, or only the attribute.
SESSION_RESET, TREAT_AS_WITHDRAW, ATTRIBUTE_DISCARD = "session-reset", "treat-as-withdraw", "attribute-discard"

A_COMMUNITIES, A_ORIGINATOR_ID, A_CLUSTER_LIST = 8, 9, 10
A_EXT_COMMUNITIES, A_IPV6_EXT_COMMUNITIES, A_LARGE_COMMUNITIES = 16, 25, 32


@dataclass(frozen=True)
class AttrRule:
    """How a recognised attribute is checked and what its errors cost."""

    name: str
    optional: int  # the expected Optional bit (F_OPTIONAL or 0)
    transitive: int  # the expected Transitive bit
    action: str  # for a malformed value (RFC 7606 7.x, RFC 6793 6, RFC 4760 7)
    size: int = 0  # raw-kept attributes: the value is a non-zero multiple of ``size`` (exact when ``exact``)
    exact: bool = False
    ibgp_only: bool = False  # from an external peer the attribute is discarded whole


ATTR_RULES: dict[int, AttrRule] = {
    A_ORIGIN: AttrRule("ORIGIN", 0, F_TRANSITIVE, TREAT_AS_WITHDRAW),  # 7.1
    A_AS_PATH: AttrRule("AS_PATH", 0, F_TRANSITIVE, TREAT_AS_WITHDRAW),  # 7.2
    A_NEXT_HOP: AttrRule("NEXT_HOP", 0, F_TRANSITIVE, TREAT_AS_WITHDRAW),  # 7.3
    A_MED: AttrRule("MULTI_EXIT_DISC", F_OPTIONAL, 0, TREAT_AS_WITHDRAW),  # 7.4
    A_LOCAL_PREF: AttrRule("LOCAL_PREF", 0, F_TRANSITIVE, TREAT_AS_WITHDRAW, ibgp_only=True),  # 7.5
    A_ATOMIC_AGGREGATE: AttrRule("ATOMIC_AGGREGATE", 0, F_TRANSITIVE, ATTRIBUTE_DISCARD),  # 7.6
    A_AGGREGATOR: AttrRule("AGGREGATOR", F_OPTIONAL, F_TRANSITIVE, ATTRIBUTE_DISCARD),  # 7.7
    A_COMMUNITIES: AttrRule("COMMUNITIES", F_OPTIONAL, F_TRANSITIVE, TREAT_AS_WITHDRAW, 4),  # 7.8
    A_ORIGINATOR_ID: AttrRule("ORIGINATOR_ID", F_OPTIONAL, 0, TREAT_AS_WITHDRAW, 4, True, True),  # 7.9
    A_CLUSTER_LIST: AttrRule("CLUSTER_LIST", F_OPTIONAL, 0, TREAT_AS_WITHDRAW, 4, False, True),  # 7.10
    A_MP_REACH: AttrRule("MP_REACH_NLRI", F_OPTIONAL, 0, SESSION_RESET),  # 7.11 (no AFI/SAFI disable)
    A_MP_UNREACH: AttrRule("MP_UNREACH_NLRI", F_OPTIONAL, 0, SESSION_RESET),  # 7.12
    A_EXT_COMMUNITIES: AttrRule("EXTENDED_COMMUNITIES", F_OPTIONAL, F_TRANSITIVE, TREAT_AS_WITHDRAW, 8),  # 7.14
    A_AS4_PATH: AttrRule("AS4_PATH", F_OPTIONAL, F_TRANSITIVE, ATTRIBUTE_DISCARD),  # RFC 6793 6
    A_AS4_AGGREGATOR: AttrRule("AS4_AGGREGATOR", F_OPTIONAL, F_TRANSITIVE, ATTRIBUTE_DISCARD, 8, True),  # RFC 6793 6
    A_IPV6_EXT_COMMUNITIES: AttrRule("IPV6_EXTENDED_COMMUNITIES", F_OPTIONAL, F_TRANSITIVE, TREAT_AS_WITHDRAW, 20),  # 7.15
    A_LARGE_COMMUNITIES: AttrRule("LARGE_COMMUNITIES", F_OPTIONAL, F_TRANSITIVE, TREAT_AS_WITHDRAW, 12),  # RFC 8092 5
}
_SEVERITY = {ATTRIBUTE_DISCARD: 1, TREAT_AS_WITHDRAW: 2, SESSION_RESET: 3}


def attr_name(type_code: int) -> str:
    rule = ATTR_RULES.get(type_code)
    return rule.name if rule else f"attribute {type_code}"


@dataclass(frozen=True)
class AttrError:
    """One UPDATE error that did not cost the session (RFC 7606): ``action`` is
    TREAT_AS_WITHDRAW or ATTRIBUTE_DISCARD; ``kind`` a short stable word for counters
    (``flags``, ``length``, ``value``, ``duplicate``, ``missing``, ``overrun``, ...)."""

    action: str
    type_code: int  # 0 = the attribute list as a whole
    kind: str
    reason: str

    @property
    def key(self) -> str:
        """Counter key, e.g. ``AS_PATH/value/treat-as-withdraw``."""
        what = attr_name(self.type_code) if self.type_code else "attributes"
        return f"{what}/{self.kind}/{self.action}"


def _attr_bytes(flags: int, type_code: int, value: bytes) -> bytes:
    if len(value) > 255 or flags & F_EXTENDED:
        return struct.pack("!BBH", flags | F_EXTENDED, type_code, len(value)) + value
    return struct.pack("!BBB", flags, type_code, len(value)) + value


def encode_attribute(attr: Attribute) -> bytes:
    return _attr_bytes(attr.flags, attr.TYPE, attr.value_bytes())


# --------------------------------------------------------------------------- UPDATE


@dataclass(frozen=True)
class Update:
    withdrawn: tuple[ipaddress.IPv4Network, ...] = ()
    attributes: tuple[Attribute, ...] = ()
    nlri: tuple[ipaddress.IPv4Network, ...] = ()
    # RFC 7606 errors found while parsing (never encoded); malformed attributes are not
    # in ``attributes``.  Any TREAT_AS_WITHDRAW turns the announced routes into withdrawals.
    errors: tuple[AttrError, ...] = ()

    TYPE: ClassVar[int] = UPDATE

    def __bytes__(self) -> bytes:
        w = encode_prefixes(self.withdrawn)
        a = b"".join(encode_attribute(x) for x in self.attributes)
        body = struct.pack("!H", len(w)) + w + struct.pack("!H", len(a)) + a + encode_prefixes(self.nlri)
        return _header(UPDATE, body)

    def get(self, type_code: int) -> Attribute | None:
        for a in self.attributes:
            if a.TYPE == type_code:
                return a
        return None

    @property
    def treat_as_withdraw(self) -> bool:
        return any(e.action == TREAT_AS_WITHDRAW for e in self.errors)

    @property
    def is_end_of_rib(self) -> bool:
        """RFC 4724 End-of-RIB: an empty UPDATE (IPv4) or a lone empty MP_UNREACH."""
        if self.withdrawn or self.nlri or self.errors:
            return False
        if not self.attributes:
            return True
        return len(self.attributes) == 1 and isinstance(self.attributes[0], MpUnreach) and not self.attributes[0].withdrawn

    def _reach(self) -> tuple[Prefix, ...]:
        mp = self.get(A_MP_REACH)
        return tuple(self.nlri) + (mp.nlri if isinstance(mp, MpReach) else ())

    def announced(self) -> tuple[Prefix, ...]:
        """Routes this UPDATE makes reachable: none when it is treated as a withdraw."""
        return () if self.treat_as_withdraw else self._reach()

    def withdrawn_all(self) -> tuple[Prefix, ...]:
        """Routes this UPDATE withdraws, the ones it announced included when an attribute
        error makes it a withdraw (RFC 7606 2)."""
        mp = self.get(A_MP_UNREACH)
        out = tuple(self.withdrawn) + (mp.withdrawn if isinstance(mp, MpUnreach) else ())
        return out + self._reach() if self.treat_as_withdraw else out

    def full_as_path(self) -> Segments:
        """The AS path with 4-octet ASNs: AS_PATH itself, or on a 2-octet session AS_PATH
        merged with AS4_PATH (RFC 6793 4.2.3).  AS4_PATH is ignored when an AGGREGATOR
        names a real ASN (not AS_TRANS): a 2-octet speaker aggregated after it was made."""
        ap = self.get(A_AS_PATH)
        segs = ap.segments if isinstance(ap, AsPath) else ()
        a4 = self.get(A_AS4_PATH)
        if not isinstance(a4, As4Path) or (isinstance(ap, AsPath) and ap.asn4):
            return segs
        agg = self.get(A_AGGREGATOR)
        if isinstance(agg, Aggregator) and agg.asn != AS_TRANS:
            return segs
        return merge_as4_path(segs, a4.segments)

    @classmethod
    def parse(cls, data: bytes, asn4: bool = True, ebgp: bool = True) -> Update:
        """Parse and validate one UPDATE with the RFC 7606 rules.

        ``asn4``: both sides sent the 4-octet AS capability (AS_PATH has 4-octet ASNs);
        ``ebgp``: the peer is external (LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST are
        then discarded, confederation segments make AS_PATH malformed).  Errors that
        leave the NLRI locatable become :class:`AttrError` entries; the rest (a
        withdrawn-routes or attribute-list length that overruns the message, an NLRI that
        does not parse, a bad or repeated MP_REACH/MP_UNREACH, an unrecognised well-known
        attribute) raise :class:`Notify`: session reset."""
        body = _body(data, UPDATE)
        malformed = (Err.UPDATE, Err.MALFORMED_ATTR_LIST)
        wlen = struct.unpack_from("!H", body)[0]
        if 2 + wlen + 2 > len(body):
            raise Notify(*malformed, b"", f"withdrawn routes length {wlen} overruns the message")
        withdrawn = decode_prefixes(bytes(body[2 : 2 + wlen]), 4, malformed)
        alen = struct.unpack_from("!H", body, 2 + wlen)[0]
        start = 4 + wlen
        if start + alen > len(body):
            raise Notify(*malformed, b"", f"path attribute length {alen} overruns the message")
        attrs, errors = cls._parse_attributes(bytes(body[start : start + alen]), asn4, ebgp)
        nlri = decode_prefixes(bytes(body[start + alen :]), 4, (Err.UPDATE, Err.INVALID_NETWORK))

        present = {a.TYPE for a in attrs}
        failed = {e.type_code for e in errors}
        if not nlri and A_NEXT_HOP in failed:
            # RFC 4760 3: without NLRI in the NLRI field NEXT_HOP means nothing; an error
            # in it costs only the attribute.
            errors = [
                AttrError(ATTRIBUTE_DISCARD, e.type_code, e.kind, e.reason) if e.type_code == A_NEXT_HOP else e
                for e in errors
            ]
        has_mp_reach = any(isinstance(a, MpReach) and a.nlri for a in attrs)
        if nlri or has_mp_reach:
            required = [A_ORIGIN, A_AS_PATH] + ([A_NEXT_HOP] if nlri else [])
            for t in required:
                if t not in present and t not in failed:  # RFC 7606 3(d)
                    errors.append(AttrError(TREAT_AS_WITHDRAW, t, "missing", f"missing well-known attribute {attr_name(t)}"))
        return cls(withdrawn, tuple(attrs), nlri, tuple(errors))

    @staticmethod
    def _parse_attributes(data: bytes, asn4: bool, ebgp: bool) -> tuple[list[Attribute], list[AttrError]]:
        out: list[Attribute] = []
        errors: list[AttrError] = []
        seen: set[int] = set()
        i = 0
        while i < len(data):
            flags = data[i]
            hl = 4 if flags & F_EXTENDED else 3
            if i + hl > len(data):
                # RFC 7606 4: not even room for an attribute header; the Total Attribute
                # Length still tells where the NLRI begins.
                errors.append(AttrError(TREAT_AS_WITHDRAW, 0, "overrun", f"{len(data) - i} octets left, too few for an attribute header"))
                break
            code = data[i + 1]
            length = struct.unpack_from("!H", data, i + 2)[0] if hl == 4 else data[i + 2]
            value = data[i + hl : i + hl + length]
            if len(value) != length:
                # RFC 7606 4: the last attribute overruns the attribute list.
                errors.append(AttrError(TREAT_AS_WITHDRAW, code, "overrun", f"{attr_name(code)} of {length} octets overruns the attribute list"))
                break
            raw = data[i : i + hl + length]
            i += hl + length
            rule = ATTR_RULES.get(code)
            if code in seen:
                if code in (A_MP_REACH, A_MP_UNREACH):  # RFC 7606 3(g)
                    raise Notify(Err.UPDATE, Err.MALFORMED_ATTR_LIST, b"", f"{attr_name(code)} appears twice")
                # RFC 7606 3(g): every occurrence after the first is discarded.
                errors.append(AttrError(ATTRIBUTE_DISCARD, code, "duplicate", f"{attr_name(code)} appears more than once"))
                continue
            seen.add(code)
            if rule is None:
                if not flags & F_OPTIONAL:  # RFC 4271 6.3 (unchanged by RFC 7606)
                    raise Notify(Err.UPDATE, Err.UNRECOGNIZED_WELL_KNOWN, raw, f"unknown well-known attribute {code}")
                out.append(Unknown(code, flags, value))
                continue
            if rule.ibgp_only and ebgp:  # RFC 7606 7.5, 7.9, 7.10
                errors.append(AttrError(ATTRIBUTE_DISCARD, code, "from-ebgp", f"{rule.name} from an external peer"))
                continue
            if code in (A_AS4_PATH, A_AS4_AGGREGATOR) and asn4:  # RFC 6793 6
                errors.append(AttrError(ATTRIBUTE_DISCARD, code, "from-4-octet-speaker", f"{rule.name} on a 4-octet AS session"))
                continue
            flag_error = (flags & F_OPTIONAL) != rule.optional or (flags & F_TRANSITIVE) != rule.transitive or bool(
                flags & F_PARTIAL and not (rule.optional and rule.transitive)
            )
            try:
                attr = Update._decode_one(code, rule, flags, value, asn4)
            except Notify as exc:
                if rule.action == SESSION_RESET:
                    raise
                errors.append(AttrError(rule.action, code, _kind(exc), exc.reason))
                continue
            if flag_error:
                # RFC 7606 3(c): treat-as-withdraw; an attribute whose own errors only
                # cost the attribute is discarded instead; MP_REACH/MP_UNREACH keep
                # their (parsed) NLRI so that the withdraw knows what to withdraw.
                action = ATTRIBUTE_DISCARD if rule.action == ATTRIBUTE_DISCARD else TREAT_AS_WITHDRAW
                errors.append(AttrError(action, code, "flags", f"flags {flags:#04x} are wrong for {rule.name}"))
                if action == ATTRIBUTE_DISCARD:
                    continue
                if code not in (A_MP_REACH, A_MP_UNREACH):
                    continue
            if isinstance(attr, AsPath) and ebgp and any(t in CONFED_SEGMENTS for t, _ in attr.segments):
                errors.append(AttrError(TREAT_AS_WITHDRAW, code, "confed-from-ebgp", "AS_PATH with confederation segments from an external peer (RFC 5065 5)"))
                continue
            if isinstance(attr, As4Path) and any(t in CONFED_SEGMENTS for t, _ in attr.segments):
                # RFC 6793 6: confederation segments in AS4_PATH are dropped, the rest kept.
                errors.append(AttrError(ATTRIBUTE_DISCARD, code, "confed-segments", "AS4_PATH confederation segments dropped"))
                attr = As4Path(tuple(s for s in attr.segments if s[0] not in CONFED_SEGMENTS), attr.flags)
            out.append(attr)
        return out, errors

    @staticmethod
    def _decode_one(code: int, rule: AttrRule, flags: int, value: bytes, asn4: bool) -> Attribute:
        decoder = _DECODERS.get(code)
        if decoder is not None:
            return decoder.decode(flags, value, asn4)
        n = len(value)
        if (rule.exact and n != rule.size) or (not rule.exact and (n == 0 or n % rule.size)):
            want = f"{rule.size}" if rule.exact else f"a non-zero multiple of {rule.size}"
            raise Notify(Err.UPDATE, Err.ATTR_LENGTH, b"", f"{rule.name} length is {n}, not {want}")
        if code == A_AS4_AGGREGATOR and value[:4] == bytes(4):
            raise Notify(Err.UPDATE, Err.OPTIONAL_ATTR, b"", "AS4_AGGREGATOR AS 0 (RFC 7607)")
        return Unknown(code, flags, value)


def _kind(exc: Notify) -> str:
    return "length" if exc.subcode == Err.ATTR_LENGTH else "value"


Message = Open | Update | Keepalive | Notification | RouteRefresh
_PARSERS = {OPEN: Open, KEEPALIVE: Keepalive, NOTIFICATION: Notification, ROUTE_REFRESH: RouteRefresh}


def parse_message(data: bytes, asn4: bool = True, ebgp: bool = True) -> Message:
    """Parse one whole message (header included); raises :class:`Notify` on an error that
    resets the session.  ``asn4``/``ebgp`` describe the session (see :meth:`Update.parse`)."""
    _length, msg_type = check_header(data)
    if msg_type == UPDATE:
        return Update.parse(data, asn4, ebgp)
    return _PARSERS[msg_type].parse(data)


def build_announce(
    prefixes: list[Prefix], *, local_asn: int, ebgp: bool, asn4: bool, next_hop: str
) -> list[Update]:
    """UPDATEs announcing ``prefixes`` (one family) with our attributes.

    ORIGIN IGP; AS_PATH [local_asn] on eBGP, empty on iBGP (RFC 4271 5.1.2); LOCAL_PREF 100
    on iBGP (5.1.5).  For a peer without the 4-octet capability a large local ASN goes out
    as AS_TRANS with the real path in AS4_PATH (RFC 6793 4.2.2).  IPv4 uses the classic
    NLRI field and NEXT_HOP; IPv6 uses MP_REACH_NLRI.  Prefixes are split so that no
    message exceeds 4096 octets.
    """
    if not prefixes:
        return []
    v6 = prefixes[0].version == 6
    attrs: list[Attribute] = [Origin(ORIGIN_IGP)]
    if ebgp:
        if asn4 or local_asn <= 0xFFFF:
            attrs.append(AsPath.sequence((local_asn,), asn4))
        else:
            attrs.append(AsPath.sequence((AS_TRANS,), False))
            attrs.append(As4Path(((AS_SEQUENCE, (local_asn,)),)))
    else:
        attrs.append(AsPath((), asn4))
    if not v6:
        attrs.append(NextHop(next_hop))
    if not ebgp:
        attrs.append(LocalPref(100))
    out = []
    chunk = 150  # 150 * 17 octets (a /128) stays far below 4096
    for k in range(0, len(prefixes), chunk):
        part = tuple(prefixes[k : k + chunk])
        if v6:
            # Attributes in ascending type order (RFC 4271 5: SHOULD).
            mp = MpReach(AFI_IPV6, SAFI_UNICAST, (next_hop,), part)
            out.append(Update((), tuple(sorted((*attrs, mp), key=lambda a: a.TYPE)), ()))
        else:
            out.append(Update((), tuple(sorted(attrs, key=lambda a: a.TYPE)), part))  # type: ignore[arg-type]
    return out


def end_of_rib(family: tuple[int, int]) -> Update:
    """The End-of-RIB marker of one family (RFC 4724 2)."""
    if family == IPV4_UNICAST:
        return Update()
    return Update((), (MpUnreach(family[0], family[1], ()),), ())


def build_withdraw(prefixes: list[Prefix]) -> list[Update]:
    if not prefixes:
        return []
    out = []
    for k in range(0, len(prefixes), 150):
        part = tuple(prefixes[k : k + 150])
        if part[0].version == 6:
            out.append(Update((), (MpUnreach(AFI_IPV6, SAFI_UNICAST, part),), ()))
        else:
            out.append(Update(part, (), ()))  # type: ignore[arg-type]
    return out
