"""Internationalized domain names: an A-label and its U-label are the same domain.

``bücher.test`` and ``xn--bcher-kva.test`` name one domain (RFC 5890 section 2.3.2.1), so
domains are compared, and looked up, in one form: A-labels, lower case, without a trailing
dot. The ``idna`` package implements IDNA 2008 with the UTS #46 mapping (which also folds
case); Python's own ``encodings.idna`` is IDNA 2003 and maps some names differently
(``ß`` to ``ss``), so it is not used.
"""

from __future__ import annotations

import idna

__all__ = ["domain_key", "to_ascii_domain", "to_unicode_domain"]


def to_ascii_domain(domain: str) -> str | None:
    """``domain`` in A-labels, lower case; None when it is not a valid internationalized
    name. Address literals (``[192.0.2.1]``) and ASCII names come back lower-cased."""
    if domain.isascii():
        return domain.lower()
    try:
        return idna.encode(domain, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        return None


def to_unicode_domain(domain: str) -> str:
    """``domain`` in U-labels where it has A-labels (for people to read); as given when it
    cannot be decoded."""
    try:
        return idna.decode(domain, uts46=True)
    except (idna.IDNAError, UnicodeError):
        return domain.lower()


def domain_key(domain: str) -> str:
    """The form in which two domain names are compared."""
    domain = domain.rstrip(".")
    ascii_form = to_ascii_domain(domain)
    return ascii_form if ascii_form is not None else domain.lower()
