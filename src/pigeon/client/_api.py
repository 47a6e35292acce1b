"""Sending a message: to a named server, or straight to each recipient domain's exchangers.

``send_async`` is the real implementation; ``send`` runs it on a fresh event loop for
programs that are not asynchronous.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable, Coroutine, Sequence
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any, ParamSpec, TypeVar

import dns.asyncresolver

from pigeon.smtp import parse_mailbox

from ._compose import envelope_recipients, to_bytes
from ._dsn import DsnRequest
from ._errors import SendError
from ._mx import MXError, addresses_of, resolve_mx
from ._results import RecipientResult, SendResult
from ._session import SMTPClient, TLSMode, Transcript

__all__ = ["send", "send_async"]

P = ParamSpec("P")
R = TypeVar("R")


async def send_async(
    message: EmailMessage | bytes,
    *,
    sender: str | None = None,
    recipients: Sequence[str] | None = None,
    server: str | None = None,
    port: int | None = None,
    mx: bool = False,
    resolver: dns.asyncresolver.Resolver | None = None,
    tls: TLSMode | None = None,
    ssl_context: ssl.SSLContext | None = None,
    verify: bool = True,
    username: str | None = None,
    password: str | None = None,
    allow_plaintext_auth: bool = False,
    local_hostname: str | None = None,
    timeout: float = 60.0,
    chunking: bool = False,
    dsn: DsnRequest | None = None,
    transcript: Transcript | None = None,
) -> SendResult:
    """Send one message; the result says, per recipient, whether it was accepted.

    ``sender`` and ``recipients`` default to the message's From and To/Cc/Bcc. With
    ``server``, the message goes to that server (``port`` 25, or 465 with ``tls="implicit"``);
    with ``mx=True`` it goes to each recipient domain's exchangers, looked up with
    ``resolver`` (default: the system's). Raises ``SendError`` only when no per-recipient
    answer could be had from a named server; with ``mx`` such failures become results.
    """
    data, sender, recipients = _envelope(message, sender, recipients)
    if mx:
        mx_port, mx_tls = port or 25, tls or "opportunistic"

        def client_for(exchanger: str, address: str) -> SMTPClient:
            return SMTPClient(
                exchanger,
                mx_port,
                tls=mx_tls,
                verify=verify,
                ssl_context=ssl_context,
                local_hostname=local_hostname,
                timeout=timeout,
                connect_to=address,
                transcript=transcript,
            )

        return await _send_mx(
            data,
            sender,
            recipients,
            resolver=resolver or dns.asyncresolver.Resolver(),
            client_for=client_for,
            chunking=chunking,
            dsn=dsn,
        )
    if server is None:
        raise ValueError("name a server, or send with mx=True")
    mode: TLSMode = tls or "opportunistic"
    client = SMTPClient(
        server,
        port or (465 if mode == "implicit" else 25),
        tls=mode,
        verify=verify,
        username=username,
        password=password,
        allow_plaintext_auth=allow_plaintext_auth,
        ssl_context=ssl_context,
        local_hostname=local_hostname,
        timeout=timeout,
        transcript=transcript,
    )
    async with client:
        return await client.send(
            data, sender=sender, recipients=recipients, chunking=chunking, dsn=dsn
        )


def _synchronous(function: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return asyncio.run(function(*args, **kwargs))

    return run


send = _synchronous(send_async)
"""``send_async`` for programs that are not asynchronous: the same arguments and result."""


def _envelope(
    message: EmailMessage | bytes, sender: str | None, recipients: Sequence[str] | None
) -> tuple[bytes, str, list[str]]:
    if isinstance(message, EmailMessage):
        if recipients is None:
            recipients = envelope_recipients(message)
        if sender is None:
            sender = parseaddr(str(message.get("From", "")))[1]
        data = to_bytes(message)
    else:
        data = message
    if sender is None:
        raise ValueError("no sender: give sender= or a message with a From header")
    if not recipients:
        raise ValueError("no recipients: give recipients= or a message with To/Cc/Bcc")
    _check_address(sender, allow_empty=True)
    for recipient in recipients:
        _check_address(recipient, allow_empty=False)
    return data, sender, list(recipients)


def _check_address(address: str, *, allow_empty: bool) -> None:
    """Refuse a bad address before connecting, saying what is wrong with it."""
    if address == "" and allow_empty:
        return
    if parse_mailbox(address) is None:
        raise ValueError(f"not a valid address: {address!r} (expected local-part@domain)")


# Makes the client for one exchanger (its name) at one of its addresses.
ClientFactory = Callable[[str, str], SMTPClient]


async def _send_mx(
    data: bytes,
    sender: str,
    recipients: Sequence[str],
    *,
    resolver: dns.asyncresolver.Resolver,
    client_for: ClientFactory,
    chunking: bool,
    dsn: DsnRequest | None,
) -> SendResult:
    by_domain: dict[str, list[str]] = {}
    for recipient in recipients:
        by_domain.setdefault(recipient.rpartition("@")[2].lower(), []).append(recipient)
    results: dict[str, RecipientResult] = {}
    for domain, group in by_domain.items():
        sent = await _send_domain(
            data,
            sender,
            domain,
            group,
            resolver=resolver,
            client_for=client_for,
            chunking=chunking,
            dsn=dsn,
        )
        for result in sent:
            results[result.recipient] = result
    return SendResult(tuple(results[r] for r in recipients))


async def _send_domain(
    data: bytes,
    sender: str,
    domain: str,
    recipients: list[str],
    *,
    resolver: dns.asyncresolver.Resolver,
    client_for: ClientFactory,
    chunking: bool,
    dsn: DsnRequest | None,
) -> list[RecipientResult]:
    def all_fail(code: int, status: str, text: str, server: str = "") -> list[RecipientResult]:
        return [RecipientResult(r, code, status, text, server) for r in recipients]

    try:
        exchangers = await resolve_mx(domain, resolver)
    except MXError as error:
        return all_fail(error.code, error.status, str(error))
    last_error = f"no address found for any mail exchanger of {domain}"
    for exchanger in exchangers:
        for address in await addresses_of(exchanger.host, resolver):
            client = client_for(exchanger.host, address)
            try:
                await client.connect()
            except SendError as error:
                # RFC 5321 section 5.1: when a connection fails or the greeting refuses, try
                # the next address, then the next exchanger (Postfix skips 5xx greetings too).
                await client.close()
                last_error = str(error)
                continue
            try:
                sent = await client.send(
                    data, sender=sender, recipients=recipients, chunking=chunking, dsn=dsn
                )
            except SendError as error:
                await client.close()
                last_error = str(error)
                continue
            await client.quit()
            return list(sent.recipients)
    return all_fail(451, "4.4.1", f"could not deliver to {domain}: {last_error}")
