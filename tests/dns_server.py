"""A small real DNS server for tests: UDP and TCP on 127.0.0.1, a free port, its own thread.

It serves the records it is given and nothing else: a name it does not know gets NXDOMAIN,
a known name asked for a type it lacks gets an empty NOERROR answer (NODATA). Every query it
receives is counted, so a test can assert that none was made::

    records = {("7.2.0.192.in-addr.arpa", "PTR"): ["mail.example.test."]}
    with DNSServer(records) as dns_server:
        resolver = make_resolver((dns_server.nameserver,))
        ...
    assert dns_server.query_count == 0

Names in record data are taken as absolute whether or not they end with a dot.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["DNSServer", "Query"]

Records = Mapping[tuple[str, str], Sequence[str] | str]

_POLL = 0.05  # seconds the server thread waits for a packet before checking for stop
_TCP_TIMEOUT = 2.0  # a TCP client that stalls mid-message is dropped after this long
_BIND_ATTEMPTS = 20  # tries at finding a port free for both UDP and TCP


@dataclass(frozen=True, slots=True)
class Query:
    """One query as received: the name (lower case, no final dot), type and transport."""

    name: str
    rdtype: str
    transport: str  # "udp" or "tcp"


class DNSServer:
    """Authoritative for exactly ``records``; NXDOMAIN for every other name.

    ``records`` maps ``(name, type)`` to the record data in zone-file text, e.g.
    ``("example.test", "MX"): ["10 mx.example.test."]``. ``rcode`` makes every answer that
    rcode instead (e.g. ``"SERVFAIL"``), for testing a failing server. Answers about the
    names in ``signed`` carry the AD flag (DNSSEC-validated) when the query asks for it.
    """

    def __init__(
        self,
        records: Records | None = None,
        *,
        ttl: int = 300,
        rcode: str | None = None,
        signed: frozenset[str] = frozenset(),
    ) -> None:
        self._rrsets: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset] = {}
        self._names: set[dns.name.Name] = set()
        for (name_text, type_text), data in (records or {}).items():
            name = dns.name.from_text(name_text)
            rdtype = dns.rdatatype.from_text(type_text)
            texts = [data] if isinstance(data, str) else list(data)
            rrset = dns.rrset.from_text_list(
                name, ttl, dns.rdataclass.IN, rdtype, texts, origin=dns.name.root, relativize=False
            )
            self._rrsets[(name, rdtype)] = rrset
            self._names.add(name)
        self._rcode = None if rcode is None else dns.rcode.from_text(rcode)
        # Names answered as a validating resolver answers for a DNSSEC-signed zone: with
        # the AD flag, to queries that ask for it (AD or DO set, RFC 6840 section 5.7).
        self._signed = {dns.name.from_text(name) for name in signed}
        self._lock = threading.Lock()
        self._queries: list[Query] = []
        self._received = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._udp, self._tcp = _bind_pair()
        self.port: int = self._udp.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="test-dns-server", daemon=True)

    # -- what tests look at -------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def nameserver(self) -> str:
        """``127.0.0.1:PORT``, the form ``make_resolver`` and ``Config.resolver`` take."""
        return f"127.0.0.1:{self.port}"

    @property
    def queries(self) -> list[Query]:
        with self._lock:
            return list(self._queries)

    @property
    def query_count(self) -> int:
        """Every DNS message received, including any that could not be parsed."""
        with self._lock:
            return self._received

    # -- life cycle ---------------------------------------------------------------------------
    def __enter__(self) -> DNSServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._udp.close()
        self._tcp.close()
        if self._thread.is_alive():
            raise AssertionError("the test DNS server did not stop within 10 s")

    # -- the server thread --------------------------------------------------------------------
    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ, "udp")
            selector.register(self._tcp, selectors.EVENT_READ, "tcp")
            while not self._stop.is_set():
                for key, _ in selector.select(_POLL):
                    try:
                        if key.data == "udp":
                            self._serve_udp()
                        else:
                            self._serve_tcp()
                    except Exception as error:  # kept for the test to inspect
                        self.errors.append(error)

    def _serve_udp(self) -> None:
        try:
            wire, peer = self._udp.recvfrom(65535)
        except BlockingIOError:
            return
        reply = self._answer(wire, "udp", udp=True)
        if reply is not None:
            self._udp.sendto(reply, peer)

    def _serve_tcp(self) -> None:
        try:
            connection, _ = self._tcp.accept()
        except BlockingIOError:
            return
        with connection:
            connection.settimeout(_TCP_TIMEOUT)
            # RFC 1035 section 4.2.2: each message is preceded by its length in two octets.
            # One query per connection is all a stub resolver sends.
            header = _recv_exactly(connection, 2)
            if header is None:
                return
            (length,) = struct.unpack("!H", header)
            wire = _recv_exactly(connection, length)
            if wire is None:
                return
            reply = self._answer(wire, "tcp", udp=False)
            if reply is not None:
                connection.sendall(struct.pack("!H", len(reply)) + reply)

    def _answer(self, wire: bytes, transport: str, *, udp: bool) -> bytes | None:
        with self._lock:
            self._received += 1
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        question = query.question[0]
        with self._lock:
            self._queries.append(
                Query(
                    name=question.name.to_text(omit_final_dot=True).lower(),
                    rdtype=dns.rdatatype.to_text(question.rdtype),
                    transport=transport,
                )
            )
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        asks_ad = bool(query.flags & dns.flags.AD) or bool(query.ednsflags & dns.flags.DO)
        if asks_ad and question.name in self._signed:
            response.flags |= dns.flags.AD
        if self._rcode is not None:
            response.set_rcode(self._rcode)
        elif question.name not in self._names:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            rrset = self._rrsets.get((question.name, question.rdtype))
            if rrset is not None:
                response.answer.append(rrset)
        # Over UDP an answer is at most 512 octets, or what the query's EDNS allows (RFC 6891);
        # a bigger one goes out truncated (TC) and the resolver asks again over TCP.
        max_size = 65535
        if udp:
            max_size = max(query.payload, 512) if query.edns >= 0 else 512
        return response.to_wire(max_size=max_size, prefer_truncation=True)


def _recv_exactly(connection: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = connection.recv(size - len(data))
        except TimeoutError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def _bind_pair() -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same free port of 127.0.0.1, both non-blocking."""
    for _ in range(_BIND_ATTEMPTS):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", port))
        except OSError as error:
            udp.close()
            tcp.close()
            if error.errno == errno.EADDRINUSE:
                continue
            raise
        tcp.listen(16)
        udp.setblocking(False)
        tcp.setblocking(False)
        return udp, tcp
    raise AssertionError(f"no port free for both UDP and TCP after {_BIND_ATTEMPTS} tries")
