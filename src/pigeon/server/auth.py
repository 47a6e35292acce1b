"""AUTH for one session: runs the SASL mechanism the client chose, asks the user store, and
slows failures down.

The mechanisms (``pigeon.auth``) do no I/O; here their steps meet the store. Store lookups
and password checks (scrypt, tens of milliseconds) run in a worker thread, so other sessions
go on meanwhile. Each failure in a session waits longer before its 535 than the one before
(the base delay doubled, up to 8 times it), which makes guessing passwords slow without
locking anyone out.

Logged as ``event=auth result=ok|failed|error`` with the mechanism, the user on success and
the reason on failure; never a password, nor the name a failed attempt gave (it is sometimes
a password typed in the wrong field).
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass, field

from pigeon.auth import (
    Challenge,
    CheckPassword,
    Failure,
    NeedCredentials,
    ServerMechanism,
    Step,
    Success,
    UserStore,
    server_mechanism,
)
from pigeon.log import event as log
from pigeon.smtp import Auth, AuthResponse, Reply, replies

__all__ = ["SessionAuth"]

_MAX_DOUBLINGS = 3  # 1, 2, 4, 8 times the base delay, then 8 again


@dataclass(slots=True)
class SessionAuth:
    store: UserStore | None
    failure_delay: float
    session: str
    client: str
    user: str | None = None  # once authenticated: the address, lower case
    failures: int = 0
    _mechanism: ServerMechanism | None = field(default=None, repr=False)

    async def step(self, event: Auth | AuthResponse) -> Reply:
        """The reply to AUTH or to a SASL response: 334 (go on), 235, 535 or 454."""
        if isinstance(event, Auth):
            self._mechanism = server_mechanism(event.mechanism)
            if self._mechanism is None:  # the core checked the name against the settings
                return replies.AUTH_UNKNOWN_MECHANISM
            if event.initial is None:
                step = self._mechanism.start()
            else:
                step = self._mechanism.respond(event.initial)
        else:
            if self._mechanism is None:
                return replies.bad_sequence("No authentication in progress")
            step = self._mechanism.respond(event.data)
        mechanism = self._mechanism
        try:
            step = await self._consult_store(mechanism, step)
        except (sqlite3.Error, OSError) as error:
            self._mechanism = None
            log("auth", session=self.session, client=self.client, result="error", reason=error)
            return replies.AUTH_TEMPORARY_FAILURE
        if isinstance(step, Challenge):
            return replies.challenge(step.data)
        self._mechanism = None
        if isinstance(step, Success):
            self.user = step.username.lower()
            log(
                "auth",
                session=self.session,
                client=self.client,
                mechanism=mechanism.name,
                user=self.user,
                result="ok",
            )
            return replies.AUTH_SUCCEEDED
        assert isinstance(step, Failure)
        self.failures += 1
        log(
            "auth",
            session=self.session,
            client=self.client,
            mechanism=mechanism.name,
            result="failed",
            reason=step.reason,
            failures=self.failures,
        )
        await asyncio.sleep(self.delay(self.failures))
        return replies.AUTH_INVALID if step.bad_credentials else replies.auth_failed(step.reason)

    def delay(self, failures: int) -> float:
        """Seconds to wait before answering the ``failures``-th failure of the session."""
        return self.failure_delay * (1 << min(failures - 1, _MAX_DOUBLINGS))

    def cancelled(self) -> None:
        """The client ended the exchange ("*" or bad base64); the core has answered."""
        if self._mechanism is not None:
            log(
                "auth",
                session=self.session,
                client=self.client,
                mechanism=self._mechanism.name,
                result="cancelled",
            )
        self._mechanism = None

    async def _consult_store(self, mechanism: ServerMechanism, step: Step) -> Step:
        store = self.store
        if isinstance(step, NeedCredentials):
            found = None
            if store is not None:
                found = await asyncio.to_thread(store.scram_credentials, step.username)
            return mechanism.credentials(found)
        if isinstance(step, CheckPassword):
            user = None
            if store is not None:
                user = await asyncio.to_thread(store.check_password, step.username, step.password)
            if user is None:
                return Failure("invalid credentials", bad_credentials=True)
            return Success(user)
        return step
