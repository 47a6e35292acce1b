"""``SMTPClient``: one connection to one server, sending one message after another.

The protocol lives in ``pigeon.smtp.ClientConnection``; this module only moves its bytes
over an asyncio stream, applies the timeouts, and decides what to do with each reply:
EHLO (falling back to HELO), STARTTLS, AUTH, then per message MAIL, RCPT and DATA or BDAT,
pipelined when the server offers PIPELINING (RFC 2920), with RSET between messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Literal

from pigeon.auth import ScramClient, ScramError
from pigeon.smtp import ClientConnection, Extensions, Reply, ReplyError

from ._compose import make_7bit, needs_8bit
from ._dsn import DsnRequest
from ._errors import AuthError, ConnectError, ProtocolError, SendError, TimeoutError_, TLSError
from ._results import RecipientResult, SendResult

__all__ = ["SMTPClient", "TLSMode", "Transcript"]

TLSMode = Literal["off", "opportunistic", "starttls", "implicit"]
Transcript = Callable[[str, str], None]  # (">" or "<", line)

# A BDAT chunk this big keeps memory bounded and the number of round trips small.
_BDAT_CHUNK = 1 << 20


class SMTPClient:
    """An SMTP connection (async). Use as ``async with SMTPClient(host, port) as client:``."""

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        tls: TLSMode = "opportunistic",
        ssl_context: ssl.SSLContext | None = None,
        verify: bool = True,
        username: str | None = None,
        password: str | None = None,
        allow_plaintext_auth: bool = False,
        local_hostname: str | None = None,
        timeout: float = 60.0,
        connect_to: str | None = None,
        transcript: Transcript | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.verify = verify
        self._ssl_context = ssl_context
        self._username = username
        self._password = password
        self._allow_plaintext_auth = allow_plaintext_auth
        self.local_hostname = local_hostname or socket.getfqdn() or "localhost"
        self.timeout = timeout
        self._connect_to = connect_to or host  # the MX's address, when host is its name
        self._transcript = transcript
        self._conn = ClientConnection()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.encrypted = False
        self.greeting: Reply | None = None
        self._messages_sent = 0

    @property
    def extensions(self) -> Extensions:
        return self._conn.extensions

    @property
    def server(self) -> str:
        """The peer as Postfix logs it: ``mx.example.test[192.0.2.1]:25``."""
        if self._connect_to == self.host:
            return f"{self.host}:{self.port}"
        return f"{self.host}[{self._connect_to}]:{self.port}"

    # -- session ------------------------------------------------------------------------------
    async def _connect(self) -> None:
        context = self._tls_context() if self.tls == "implicit" else None
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self._connect_to,
                    self.port,
                    ssl=context,
                    server_hostname=self.host if context else None,
                ),
                self.timeout,
            )
        except TimeoutError:
            raise TimeoutError_(
                "connect", f"no connection to {self.server} within {self.timeout:g}s"
            ) from None
        except ssl.SSLError as error:
            raise TLSError("connect", f"TLS with {self.server} failed: {error}") from None
        except OSError as error:
            raise ConnectError(
                "connect", f"cannot connect to {self.server}: {error.strerror or error}"
            ) from None
        self.encrypted = context is not None
        await self._greeted()
        if self.tls in ("starttls", "opportunistic") and not self.encrypted:
            if "STARTTLS" in self.extensions:
                await self._starttls()
            elif self.tls == "starttls":
                raise TLSError(
                    "STARTTLS", f"{self.server} does not offer STARTTLS", temporary=False
                )
        if self._username is not None:
            await self._authenticate()

    async def _greeted(self) -> None:
        """Read the greeting and say EHLO (HELO to an old server)."""
        self.greeting = await self._reply("greeting")
        if self.greeting.code != 220:
            raise SendError(
                "greeting",
                f"{self.server} refused the session: {self.greeting}",
                temporary=self.greeting.code < 500,
            )
        await self._hello()

    async def take_over(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Be the client on a connection the peer opened, once the roles have reversed (ATRN,
        RFC 2645 section 5.3): read the greeting it now sends, and say EHLO. No STARTTLS or
        AUTH: whatever the connection had before the turn, it keeps.

        On failure the connection is closed before the error is raised."""
        self._reader, self._writer = reader, writer
        self.encrypted = writer.get_extra_info("ssl_object") is not None
        try:
            await self._greeted()
        except BaseException:
            await self.close(abort=True)
            raise

    async def command(self, line: str) -> Reply:
        """Send one command that this client has no method for (ATRN, ETRN, VRFY...) and
        return its reply."""
        return await self._command(line.split(" ", 1)[0].upper(), self._conn.verb(line))

    def detach(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Hand the connection over (after ATRN's 250 the peer is the client now); this
        client forgets it."""
        if self._reader is None or self._writer is None:
            raise ProtocolError("detach", "not connected")
        reader, writer = self._reader, self._writer
        self._reader = self._writer = None
        return reader, writer

    async def _hello(self) -> None:
        reply = await self._command("EHLO", self._conn.ehlo(self.local_hostname))
        if reply.code in (500, 502):
            # RFC 5321 section 3.2: an old server that knows no EHLO; try HELO.
            reply = await self._command("HELO", self._conn.helo(self.local_hostname))
        if reply.code != 250:
            raise SendError(
                "EHLO", f"{self.server} refused EHLO/HELO: {reply}", temporary=reply.code < 500
            )

    async def _starttls(self) -> None:
        reply = await self._command("STARTTLS", self._conn.starttls())
        if reply.code != 220:
            raise TLSError(
                "STARTTLS", f"{self.server} refused STARTTLS: {reply}", temporary=reply.code < 500
            )
        assert self._writer is not None
        try:
            await asyncio.wait_for(
                self._writer.start_tls(self._tls_context(), server_hostname=self.host),
                self.timeout,
            )
        except TimeoutError:
            raise TimeoutError_("STARTTLS", "TLS handshake timed out") from None
        except (ssl.SSLError, ssl.CertificateError, OSError) as error:
            raise TLSError("STARTTLS", f"TLS with {self.server} failed: {error}") from None
        self.encrypted = True
        self._conn.tls_started()
        await self._hello()

    async def _authenticate(self) -> None:
        username, password = self._username or "", self._password or ""
        if (
            not self.encrypted
            and not self._allow_plaintext_auth
            and not _is_loopback(self._connect_to)
        ):
            raise AuthError(
                "AUTH",
                "refusing to send credentials without TLS (use TLS, or allow plaintext AUTH)",
                temporary=False,
            )
        mechanisms = self.extensions.auth_mechanisms
        if "SCRAM-SHA-256" in mechanisms:
            # Preferred: the password never crosses the wire, and the server proves it
            # knows it too.
            reply = await self._scram(username, password)
        elif "PLAIN" in mechanisms:
            token = _b64(f"\0{username}\0{password}")
            reply = await self._command("AUTH", self._conn.auth("PLAIN", token), secret=True)
            if reply.code == 334:  # a server that wants the response on its own line
                reply = await self._command("AUTH", self._conn.auth_continue(token), secret=True)
        elif "LOGIN" in mechanisms:
            reply = await self._command("AUTH", self._conn.auth("LOGIN"))
            for secret in (username, password):
                if reply.code != 334:
                    break
                reply = await self._command(
                    "AUTH", self._conn.auth_continue(_b64(secret)), secret=True
                )
        else:
            offered = " ".join(mechanisms) or "none"
            raise AuthError(
                "AUTH",
                f"{self.server} offers no usable AUTH mechanism ({offered})",
                temporary=False,
            )
        if reply.code != 235:
            raise AuthError(
                "AUTH",
                f"{self.server} refused the credentials: {reply}",
                temporary=reply.code < 500,
            )

    async def _scram(self, username: str, password: str) -> Reply:
        """SCRAM-SHA-256 (RFC 7677): client-first as the initial response, client-final in
        answer to the server-first, then the server's signature is checked: in a last 334
        (answered with an empty line, RFC 4954 section 4) or, from a lenient server, in 235."""
        try:
            scram = ScramClient(username, password)
        except ScramError as error:
            raise AuthError("AUTH", str(error), temporary=False) from None
        reply = await self._command(
            "AUTH", self._conn.auth("SCRAM-SHA-256", _b64(scram.first())), secret=True
        )
        if reply.code != 334:
            return reply
        try:
            final = scram.final(_unb64(reply.text))
            reply = await self._command("AUTH", self._conn.auth_continue(_b64(final)), secret=True)
            if reply.code == 334:
                scram.verify(_unb64(reply.text))
                reply = await self._command("AUTH", self._conn.auth_continue(""), secret=True)
            elif reply.code == 235:
                raise ScramError("the server accepted without proving it knows the password")
        except ScramError as error:
            if not self._conn.closed and reply.code == 334:
                # Leave the exchange cleanly before giving up on this server.
                await self._command("AUTH", self._conn.auth_continue("*"), secret=True)
            raise AuthError(
                "AUTH", f"{self.server}: SCRAM-SHA-256 failed: {error}", temporary=False
            ) from None
        return reply

    async def quit(self) -> None:
        if self._writer is None:
            return
        try:
            if not self._conn.closed:
                await self._command("QUIT", self._conn.quit())
        except SendError:
            pass  # the message was already sent; a rude goodbye changes nothing
        finally:
            await self.close()

    async def close(self, *, abort: bool = False) -> None:
        """Close the connection; ``abort`` drops unsent data at once (after an error)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            if abort:
                writer.transport.abort()
            else:
                writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), 5)

    async def __aenter__(self) -> SMTPClient:
        await self.connect()
        return self

    async def connect(self) -> None:
        """Connect, read the greeting, say EHLO, start TLS and authenticate as configured.

        On failure the connection is closed before the error is raised."""
        try:
            await self._connect()
        except BaseException:
            await self.close(abort=True)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.quit()
        else:
            await self.close(abort=True)

    # -- one message --------------------------------------------------------------------------
    async def send(
        self,
        message: bytes,
        *,
        sender: str,
        recipients: Sequence[str],
        chunking: bool = False,
        requiretls: bool = False,
        mail_parameters: Mapping[str, str | None] | None = None,
        recipient_parameters: Sequence[Mapping[str, str | None]] | None = None,
        dsn: DsnRequest | None = None,
    ) -> SendResult:
        """Send ``message`` (RFC 5322 bytes) from ``sender`` to ``recipients``.

        Non-ASCII addresses go with SMTPUTF8 (RFC 6531), or, when the server does not offer
        it, are refused here with 553 5.6.7. ``requiretls`` asks the server to pass the
        message on over TLS only (RFC 8689; the caller checks that REQUIRETLS is offered).
        ``mail_parameters`` and ``recipient_parameters`` (one mapping per recipient) add
        ESMTP parameters, such as RFC 3461's RET/ENVID and NOTIFY/ORCPT; the caller checks
        that the server offers their extension. ``dsn`` asks for delivery notifications
        (RFC 3461) where the server offers DSN, and is left out where it does not."""
        if not recipients:
            raise ValueError("no recipients")
        ext = self.extensions
        utf8 = not sender.isascii() or not all(r.isascii() for r in recipients)
        if utf8 and "SMTPUTF8" not in ext:
            text = f"{self.server} does not offer SMTPUTF8, which non-ASCII addresses need"
            return self._all(recipients, Reply.of(553, text, "5.6.7"))
        if self._messages_sent:
            reply = await self._command("RSET", self._conn.rset())
            if reply.code != 250:
                raise ProtocolError("RSET", f"{self.server} refused RSET: {reply}")
        self._messages_sent += 1

        parameters: dict[str, str | None] = {}
        if needs_8bit(message):
            if "8BITMIME" in ext:
                parameters["BODY"] = "8BITMIME"
            else:
                message = make_7bit(message)
        size = len(message)
        limit = ext.size_limit
        if limit is not None and size > limit:
            text = f"message of {size} octets exceeds the server's limit of {limit} (SIZE)"
            return self._all(recipients, Reply.of(552, text, "5.3.4"))
        if "SIZE" in ext:
            parameters["SIZE"] = str(size)
        if utf8:
            parameters["SMTPUTF8"] = None
        if requiretls:
            parameters["REQUIRETLS"] = None
        parameters.update(mail_parameters or {})
        if recipient_parameters is not None and len(recipient_parameters) != len(recipients):
            raise ValueError("recipient_parameters needs one mapping per recipient")
        rcpt_parameters = list(recipient_parameters or [{}] * len(recipients))
        if dsn is not None and "DSN" in ext:
            parameters.update(dsn.mail_parameters())
            rcpt_parameters = [
                {**p, **dsn.rcpt_parameters(r)}
                for r, p in zip(recipients, rcpt_parameters, strict=True)
            ]
        use_bdat = chunking and "CHUNKING" in ext
        pipelining = "PIPELINING" in ext

        if pipelining:
            batch = [self._conn.mail(sender, parameters)]
            batch += [
                self._conn.rcpt(r, p) for r, p in zip(recipients, rcpt_parameters, strict=True)
            ]
            if not use_bdat:
                batch.append(self._conn.data())
            await self._write(b"".join(batch), stage="MAIL")
            mail = await self._reply("MAIL")
            rcpt_replies = [await self._reply("RCPT") for _ in recipients]
            data = None if use_bdat else await self._reply("DATA")
        else:
            mail = await self._command("MAIL", self._conn.mail(sender, parameters))
            if mail.code != 250:
                return self._all(recipients, mail)
            rcpt_replies = [
                await self._command("RCPT", self._conn.rcpt(r, p))
                for r, p in zip(recipients, rcpt_parameters, strict=True)
            ]
            accepted_any = any(200 <= r.code < 300 for r in rcpt_replies)
            data = None
            if accepted_any and not use_bdat:
                data = await self._command("DATA", self._conn.data())
        if mail.code != 250:
            if data is not None and data.code == 354:
                await self._command("DATA", self._conn.message(b""))  # RFC 2920 section 3.1
            return self._all(recipients, mail)

        accepted = [
            r for r, reply in zip(recipients, rcpt_replies, strict=True) if 200 <= reply.code < 300
        ]
        final: Reply | None = None
        if accepted:
            if use_bdat:
                final = await self._send_bdat(message)
            elif data is not None and data.code == 354:
                final = await self._command("DATA", self._conn.message(message))
            else:
                final = data
        elif data is not None and data.code == 354:
            await self._command("DATA", self._conn.message(b""))
        results = []
        for recipient, rcpt in zip(recipients, rcpt_replies, strict=True):
            decided_by = final if 200 <= rcpt.code < 300 and final is not None else rcpt
            results.append(self._result(recipient, decided_by))
        return SendResult(tuple(results))

    async def _send_bdat(self, message: bytes) -> Reply:
        chunks = [message[i : i + _BDAT_CHUNK] for i in range(0, len(message), _BDAT_CHUNK)] or [
            b""
        ]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            await self._write(self._conn.bdat(chunk, last=last), stage="DATA")
        final = None
        for _ in chunks:
            final = await self._reply("DATA")
            if final.code != 250:
                break
        assert final is not None
        return final

    # -- plumbing -----------------------------------------------------------------------------
    def _all(self, recipients: Sequence[str], reply: Reply) -> SendResult:
        return SendResult(tuple(self._result(r, reply) for r in recipients))

    def _result(self, recipient: str, reply: Reply) -> RecipientResult:
        return RecipientResult(recipient, reply.code, reply.status, reply.text, self.server)

    async def _command(self, stage: str, data: bytes, *, secret: bool = False) -> Reply:
        await self._write(data, stage=stage, secret=secret)
        return await self._reply(stage)

    async def _write(self, data: bytes, *, stage: str, secret: bool = False) -> None:
        writer = self._writer
        if writer is None:
            raise ProtocolError(stage, "not connected")
        if self._transcript is not None:
            self._log_sent(data, secret=secret)
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), self.timeout)
        except TimeoutError:
            raise TimeoutError_(stage, f"{self.server} stopped reading") from None
        except (OSError, ssl.SSLError) as error:
            raise ProtocolError(stage, f"connection to {self.server} lost: {error}") from None

    async def _reply(self, stage: str) -> Reply:
        reader = self._reader
        if reader is None:
            raise ProtocolError(stage, "not connected")
        while True:
            try:
                answer = self._conn.next_reply()
            except ReplyError as error:
                raise ProtocolError(stage, f"{self.server} sent garbage: {error}") from None
            if answer is not None:
                reply = answer[1]
                if self._transcript is not None:
                    for line in (
                        reply.to_bytes(enhanced=True).decode("utf-8", "replace").splitlines()
                    ):
                        self._transcript("<", line)
                if reply.code == 421 and stage not in ("QUIT", "greeting"):
                    raise SendError(stage, f"{self.server} is closing the session: {reply}")
                return reply
            try:
                data = await asyncio.wait_for(reader.read(65536), self.timeout)
            except TimeoutError:
                raise TimeoutError_(
                    stage, f"{self.server} did not answer within {self.timeout:g}s"
                ) from None
            except (OSError, ssl.SSLError) as error:
                raise ProtocolError(stage, f"connection to {self.server} lost: {error}") from None
            if not data:
                raise ProtocolError(stage, f"{self.server} closed the connection")
            self._conn.receive_data(data)

    def _log_sent(self, data: bytes, *, secret: bool) -> None:
        assert self._transcript is not None
        text = data.decode("utf-8", "replace")
        lines = text.split("\r\n")
        if lines and lines[-1] == "":
            lines.pop()
        for line in lines:
            shown = line
            if secret:  # keep "AUTH PLAIN", mask what follows
                words = line.split(" ", 2)
                shown = (
                    " ".join(words[:2]) + " ****" if line.upper().startswith("AUTH ") else "****"
                )
            self._transcript(">", shown)

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is not None:
            return self._ssl_context
        context = ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _b64(text: str | bytes) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except ValueError:  # binascii.Error is one
        raise ScramError("the server's challenge is not base64") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
