"""Delivery agents: one per route, each reporting a result per recipient.

``MaildirAgent`` for local users; ``pigeon.delivery.smtp.SmtpAgent`` for other domains;
``pigeon.delivery.terminal.TerminalAgent`` for users' terminals (SEND, SOML, SAML).

Agents deliver and report; they never retry or bounce by themselves (that is the queue's job).
"""

from .maildir import MaildirAgent
from .result import DeliveryResult, MaildirItem, Outcome

__all__ = ["DeliveryResult", "MaildirAgent", "MaildirItem", "Outcome"]
