"""The shapes of the HTTP API's JSON, which also make its OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

__all__ = [
    "ActionResult",
    "AliasChange",
    "AliasModel",
    "AttachmentInfo",
    "DomainInfo",
    "Error",
    "HeaderField",
    "ListChange",
    "ListModel",
    "ListenerModel",
    "MailboxInfo",
    "Me",
    "MessageDetail",
    "MessagePage",
    "MessageSummaryModel",
    "QueueAttempt",
    "QueueMessage",
    "QueueMessageDetail",
    "QueueRecipient",
    "SessionTranscript",
    "Status",
    "TranscriptLine",
    "UserAttributes",
    "UserAttributesChange",
    "UserInfo",
]


class Error(BaseModel):
    detail: str


class Me(BaseModel):
    address: str
    admin: bool
    csrf_token: str = Field(description="send as X-CSRF-Token with cookie-based requests")


class MailboxInfo(BaseModel):
    address: str
    domain: str
    user: str
    messages: int
    unread: int


class MessageSummaryModel(BaseModel):
    id: str
    sender: str = Field(description="the From header")
    to: str = Field(description="the To and Cc headers")
    subject: str
    date: datetime | None = Field(description="the Date header")
    received: datetime = Field(description="when it reached the mailbox")
    size: int
    seen: bool


class MessagePage(BaseModel):
    total: int
    offset: int
    limit: int
    messages: list[MessageSummaryModel]


class HeaderField(BaseModel):
    name: str
    value: str


class AttachmentInfo(BaseModel):
    index: int
    filename: str
    content_type: str
    size: int
    content_id: str


class MessageDetail(MessageSummaryModel):
    mailbox: str
    message_id: str
    cc: str
    headers: list[HeaderField]
    text: str | None
    has_html: bool
    attachments: list[AttachmentInfo]


class QueueRecipient(BaseModel):
    address: str
    state: str = Field(description="queued, deferred, held, delivered or failed")
    attempts: int
    next_attempt: datetime | None
    status: str
    last_reply: str


class QueueMessage(BaseModel):
    queue_id: str
    size: int
    arrival: datetime
    sender: str
    worker: str
    recipients: list[QueueRecipient]


class QueueAttempt(BaseModel):
    recipient: str
    at: datetime
    outcome: str
    status: str
    detail: str


class QueueMessageDetail(QueueMessage):
    header: str | None
    attempts: list[QueueAttempt]
    problem: str


class ActionResult(BaseModel):
    action: str
    queue_id: str | None
    report: list[str] = Field(description="what the workers did")
    waiting: list[str] = Field(description="workers not running: they do it when they start")


class ListenerModel(BaseModel):
    address: str
    tls: str
    role: str


class Status(BaseModel):
    hostname: str
    version: str
    worker: str
    uptime: float = Field(description="seconds since this process started serving")
    sessions_open: int = Field(description="SMTP sessions open in all workers")
    listeners: list[ListenerModel]
    queue: dict[str, int] = Field(description="recipients in the queue index, by state")


class DomainInfo(BaseModel):
    domain: str
    catch_all: bool
    users: list[str]


class UserInfo(BaseModel):
    address: str
    source: str = Field(description="users.db, or the configuration")
    admin: bool


class TranscriptLine(BaseModel):
    direction: str = Field(description="'>' from the client, '<' from the server")
    text: str


class SessionTranscript(BaseModel):
    worker: str = Field(description="the worker process that served the session: w0, w1, ...")
    number: int = Field(description="the order of the session among its worker's")
    session: str
    client: str
    started: datetime
    ended: datetime | None
    lines: list[TranscriptLine]


# -- the directory ---------------------------------------------------------------------------------
Source = Literal["config", "store", "none"]
Posting = Literal["anyone", "members", "owner"]
AddressText = Annotated[str, Field(min_length=3, max_length=320)]


class AliasModel(BaseModel):
    address: str
    targets: list[str]
    source: Source = Field(description="config: the configuration file (read-only here)")


class AliasChange(BaseModel):
    targets: list[AddressText] = Field(min_length=1, max_length=1000)


class ListModel(BaseModel):
    address: str
    owner: str
    posting: Posting
    members: list[str]
    source: Source


class ListChange(BaseModel):
    owner: AddressText
    posting: Posting = "anyone"
    members: list[AddressText] = Field(default_factory=list, max_length=100_000)


class UserAttributes(BaseModel):
    address: str
    name: str
    quota: int = Field(description="octets; 0: no limit")
    addresses: list[str]
    forward: list[str]
    moved_to: str
    source: Source = Field(description="none: no attributes set")
    route: str = Field(description="where mail to the address goes now")


class UserAttributesChange(BaseModel):
    name: Annotated[str, Field(max_length=200)] | None = None
    quota: Annotated[int, Field(ge=0)] | None = None
    addresses: list[AddressText] | None = Field(
        default=None, description="the whole list of extra addresses"
    )
    forward: list[AddressText] | None = None
    moved_to: Annotated[str, Field(max_length=320)] | None = None
