"""Regular expressions for the SMTP grammar, each beside the ABNF it implements.

Everything here is RFC 5321 section 4.1.2 unless a comment says otherwise. The expressions
work on ``str`` (commands are decoded before they are parsed) and are anchored by their users
with ``fullmatch``.
"""

from __future__ import annotations

import re

__all__ = [
    "ADDRESS_LITERAL",
    "DOMAIN",
    "DOMAIN_UTF8",
    "DOT_STRING",
    "DOT_STRING_UTF8",
    "ESMTP_KEYWORD",
    "ESMTP_VALUE",
    "QUOTED_STRING",
]

# Let-dig        = ALPHA / DIGIT
# Ldh-str        = *( ALPHA / DIGIT / "-" ) Let-dig
# sub-domain     = Let-dig [Ldh-str]
# Domain         = sub-domain *("." sub-domain)
_SUB_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
DOMAIN = rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*"

# address-literal  = "[" ( IPv4-address-literal / IPv6-address-literal /
#                          General-address-literal ) "]"
# General-address-literal  = Standardized-tag ":" 1*dcontent
# dcontent       = %d33-90 / %d94-126   ; Printable US-ASCII excl. "[", "\", "]"
# The IPv4 and IPv6 forms are checked further with the ipaddress module.
ADDRESS_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"

# atext (RFC 5322 section 3.2.3): ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" /
#                                 "+" / "-" / "/" / "=" / "?" / "^" / "_" / "`" / "{" / "|" /
#                                 "}" / "~"
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
# Atom           = 1*atext
# Dot-string     = Atom *("."  Atom)
DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"

# Quoted-string  = DQUOTE *QcontentSMTP DQUOTE
# QcontentSMTP   = qtextSMTP / quoted-pairSMTP
# quoted-pairSMTP  = %d92 %d32-126
# qtextSMTP      = %d32-33 / %d35-91 / %d93-126
QUOTED_STRING = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'

# esmtp-keyword  = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
# esmtp-value    = 1*(%d33-60 / %d62-126)   ; any CHAR excluding "=", SP, and control
ESMTP_KEYWORD = r"[A-Za-z0-9][A-Za-z0-9-]*"
ESMTP_VALUE = r"[\x21-\x3c\x3e-\x7e]+"

# Mailbox        = Local-part "@" ( Domain / address-literal )
# Local-part     = Dot-string / Quoted-string
MAILBOX_RE = re.compile(
    rf"(?P<local>{DOT_STRING}|{QUOTED_STRING})@(?P<domain>{DOMAIN}|{ADDRESS_LITERAL})"
)
# A-d-l          = At-domain *( "," At-domain )   ; source route, to be ignored (4.1.1.3)
# At-domain      = "@" Domain
ADL_RE = re.compile(rf"@{DOMAIN}(?:,@{DOMAIN})*")
# esmtp-param    = esmtp-keyword ["=" esmtp-value]
ESMTP_PARAM_RE = re.compile(rf"(?P<keyword>{ESMTP_KEYWORD})(?:=(?P<value>{ESMTP_VALUE}))?")
DOMAIN_RE = re.compile(DOMAIN)

# RFC 6531 section 3.3 (SMTPUTF8) extends the grammar with UTF-8:
#   sub-domain   =/ U-label
#   atext        =/ UTF8-non-ascii
#   qtextSMTP    =/ UTF8-non-ascii
# Commands are decoded before they are parsed, so UTF8-non-ascii is any character above
# U+007F here (the caller has refused controls and separators already). A U-label is
# checked further by IDNA (``_idna.py``); the expression only finds where it is.
_NON_ASCII = r"[^\x00-\x7f]"
_SUB_DOMAIN_UTF8 = (
    rf"(?:[A-Za-z0-9]|{_NON_ASCII})(?:(?:[A-Za-z0-9-]|{_NON_ASCII}){{0,61}}"
    rf"(?:[A-Za-z0-9]|{_NON_ASCII}))?"
)
DOMAIN_UTF8 = rf"{_SUB_DOMAIN_UTF8}(?:\.{_SUB_DOMAIN_UTF8})*"
_ATEXT_UTF8 = rf"(?:{_ATEXT}|{_NON_ASCII})"
DOT_STRING_UTF8 = rf"{_ATEXT_UTF8}+(?:\.{_ATEXT_UTF8}+)*"
QUOTED_STRING_UTF8 = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|{_NON_ASCII}|\\[\x20-\x7e])*"'
MAILBOX_UTF8_RE = re.compile(
    rf"(?P<local>{DOT_STRING_UTF8}|{QUOTED_STRING_UTF8})"
    rf"@(?P<domain>{DOMAIN_UTF8}|{ADDRESS_LITERAL})"
)
