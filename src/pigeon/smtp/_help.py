"""The text of HELP (RFC 5321 section 4.1.1.8): the list of commands, and each explained."""

from __future__ import annotations

__all__ = ["COMMAND_HELP", "OPTIONAL_COMMANDS", "command_list"]

COMMAND_HELP: dict[str, tuple[str, ...]] = {
    "HELO": ("HELO <domain>", "Introduce yourself (SMTP). Starts the session."),
    "EHLO": (
        "EHLO <domain>",
        "Introduce yourself (ESMTP); the reply lists the extensions offered.",
    ),
    "MAIL": (
        "MAIL FROM:<sender> [SIZE=<octets>] [BODY=7BIT|8BITMIME]",
        "Start a mail transaction; <> is the null sender of bounces.",
    ),
    "RCPT": ("RCPT TO:<recipient>", "Add a recipient; repeat for several."),
    "DATA": (
        "DATA",
        "Send the message text after the 354 reply; end it with a line holding only '.'.",
    ),
    "RSET": ("RSET", "Abort the current mail transaction."),
    "NOOP": ("NOOP", "Do nothing; the server answers 250."),
    "QUIT": ("QUIT", "End the session."),
    "HELP": ("HELP [<command>]", "List the commands, or explain one."),
    "VRFY": ("VRFY <user>", "Ask whether a mailbox exists (may be refused by policy)."),
    "EXPN": ("EXPN <list>", "Ask for the members of a mailing list (may be refused by policy)."),
    "SEND": ("SEND FROM:<sender>", "Deliver to the user's terminal only (RFC 821)."),
    "SOML": ("SOML FROM:<sender>", "Deliver to the terminal if logged in, else mailbox (RFC 821)."),
    "SAML": ("SAML FROM:<sender>", "Deliver to the terminal and the mailbox (RFC 821)."),
    "TURN": ("TURN", "Reverse the roles of client and server (RFC 821)."),
    "STARTTLS": (
        "STARTTLS",
        "Start TLS (RFC 3207); then send EHLO again. Offered only where EHLO lists it.",
    ),
    "AUTH": (
        "AUTH <mechanism> [initial-response]",
        "Authenticate (RFC 4954) with a mechanism EHLO lists; '*' cancels.",
    ),
    "BDAT": (
        "BDAT <octets> [LAST]",
        "Send the message in chunks of exactly that many octets (RFC 3030).",
    ),
    "ETRN": ("ETRN <domain>", "Start delivery of the mail queued for a domain (RFC 1985)."),
    "ATRN": (
        "ATRN [<domain>,...]",
        "After AUTH: take your domains' held mail on this connection (RFC 2645).",
    ),
}

# Listed, and explained, only where the session offers them (as EHLO does).
OPTIONAL_COMMANDS = frozenset({"STARTTLS", "AUTH", "BDAT", "ETRN", "ATRN"})


def command_list(*, offered: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The 214 text of a bare HELP: the commands always understood, and of the optional
    ones those ``offered``."""
    names = " ".join(
        name for name in COMMAND_HELP if name not in OPTIONAL_COMMANDS or name in offered
    )
    return (
        "Pigeon SMTP server; commands:",
        names,
        "HELP <command> explains one. Mail for the postmaster: RCPT TO:<postmaster>",
        "End of HELP info",
    )
