"""Tests for pigeon.smtp._grammar and _abnf: mailboxes, domains, paths and ESMTP parameters.

Each case cites the RFC 5321 section 4.1.2 production it exercises. Paths are also tested as
the server sees them in test_smtp_server_connection.py; here the parsers are called directly.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.smtp import Address, CommandError, Reply, parse_mailbox, replies, valid_domain
from pigeon.smtp._grammar import MAX_PATH, parse_parameters, parse_path

# -- parse_mailbox: Mailbox = Local-part "@" ( Domain / address-literal ) -----------------------


@pytest.mark.parametrize(
    ("text", "local", "domain"),
    [
        ("user@example.test", "user", "example.test"),
        ("first.last@sub.example.test", "first.last", "sub.example.test"),
        ("a@b", "a", "b"),
        ("UPPER@EXAMPLE.TEST", "UPPER", "EXAMPLE.TEST"),  # kept as sent
        ("x@a-b.c-d.test", "x", "a-b.c-d.test"),
        ("x@123.test", "x", "123.test"),
        # atext: every special an Atom may hold (RFC 5322 section 3.2.3)
        ("!#$%&'*+/=?^_`{|}~-@example.test", "!#$%&'*+/=?^_`{|}~-", "example.test"),
        ("user+tag@example.test", "user+tag", "example.test"),
        # Quoted-string: the quotes and quoted-pairs are decoded
        ('"john doe"@example.test', "john doe", "example.test"),
        ('"a\\"b"@example.test', 'a"b', "example.test"),
        ('"a\\\\b"@example.test', "a\\b", "example.test"),
        ('"\\x"@example.test', "x", "example.test"),  # quoted-pairSMTP = "\" %d32-126
        ('"a@b"@example.test', "a@b", "example.test"),
        ('"a..b"@example.test', "a..b", "example.test"),
        ('""@example.test', "", "example.test"),
        ('" "@example.test', " ", "example.test"),
        # address literals (4.1.3)
        ("u@[192.0.2.1]", "u", "[192.0.2.1]"),
        ("u@[0.0.0.0]", "u", "[0.0.0.0]"),
        ("u@[255.255.255.255]", "u", "[255.255.255.255]"),
        ("u@[IPv6:2001:db8::1]", "u", "[IPv6:2001:db8::1]"),
        ("u@[ipv6:::1]", "u", "[ipv6:::1]"),  # ABNF strings are case-insensitive
        ("u@[IPv6:2001:db8:0:0:0:0:0:1]", "u", "[IPv6:2001:db8:0:0:0:0:0:1]"),
        ("u@[IPv6:::ffff:192.0.2.1]", "u", "[IPv6:::ffff:192.0.2.1]"),  # IPv6v4-comp
        ("u@[x-tag:any/content!]", "u", "[x-tag:any/content!]"),  # General-address-literal
    ],
)
def test_parse_mailbox_accepts(text: str, local: str, domain: str) -> None:
    assert parse_mailbox(text) == Address(local, domain)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "user",
        "@example.test",
        "user@",
        "user@@example.test",
        "a..b@example.test",  # Dot-string: no empty atom
        ".a@example.test",
        "a.@example.test",
        "a b@example.test",
        "a(b)@example.test",
        "a,b@example.test",
        "a\\b@example.test",  # backslash only inside quotes
        'a"b@example.test',
        '"a"b@example.test',
        '"unterminated@example.test',
        '"a"@"b"',
        '"a\\"@example.test',  # the backslash eats the closing quote
        '"tab\there"@example.test',  # qtextSMTP is %d32-126 minus " and \
        "user@-example.test",  # sub-domain starts with Let-dig
        "user@example-.test",  # and ends with one
        "user@example..test",
        "user@example.test.",  # no trailing dot in Domain
        "user@.example.test",
        "user@exa_mple.test",
        "user@exa mple.test",
        "ü@example.test",
        "user@bücher.test",
        "user@[192.0.2.1",
        "user@192.0.2.1]",
        "user@[]",
        "user@[256.0.0.1]",
        "user@[192.0.2]",
        "user@[192.0.2.1.5]",
        "user@[IPv6:2001:db8::zz]",
        "user@[IPv6:1:2:3:4:5:6:7:8:9]",
        "user@[IPv6:]",
        "user@[IPv6:fe80::1%eth0]",  # a zone id is not IPv6-addr
        "user@[:content]",  # Standardized-tag is not empty
        "user@[tag:]",  # 1*dcontent
        "user@[-tag:x]",
        "user@[a[b]",
        "user@[a\\b]",
        "user@[a b]",
    ],
)
def test_parse_mailbox_refuses(text: str) -> None:
    assert parse_mailbox(text) is None


def test_label_length_limit() -> None:
    # sub-domain is at most 63 octets (RFC 1035 2.3.4, which 5321 2.3.5 defers to).
    assert parse_mailbox("u@" + "a" * 63 + ".test") == Address("u", "a" * 63 + ".test")
    assert parse_mailbox("u@" + "a" * 64 + ".test") is None


def test_domain_length_limit() -> None:
    # RFC 5321 4.5.3.1.2: a domain is at most 255 octets.
    labels = ["a" * 63] * 4  # 4 * 63 + 3 dots = 255
    domain = ".".join(labels)
    assert len(domain) == 255
    assert parse_mailbox("u@" + domain) == Address("u", domain)
    assert parse_mailbox("u@x" + domain) is None


# -- valid_domain: what HELO and EHLO take ------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "example.test",
        "a",
        "mail-1.example.test",
        "xn--bcher-kva.test",
        "[192.0.2.1]",
        "[IPv6:2001:db8::1]",
        "[IPv6:::1]",
        "[tag:x]",
        "1.2.3.4",  # a Domain made of digits is still a Domain syntactically
    ],
)
def test_valid_domain_true(text: str) -> None:
    assert valid_domain(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "-a",
        "a-",
        "a..b",
        "a.",
        "a_b",
        "a b",
        "[192.0.2.1",
        "192.0.2.1]",
        "[999.0.2.1]",
        "[IPv6:::g]",
        "[IPv6:fe80::1%lo]",
        "[]",
        "a" * 64,
        ".".join(["a" * 63] * 4) + "a",  # 256 octets
    ],
)
def test_valid_domain_false(text: str) -> None:
    assert not valid_domain(text)


# -- Address ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (Address("user", "example.test"), "user@example.test"),
        (Address("a.b", "example.test"), "a.b@example.test"),
        (Address("a b", "example.test"), '"a b"@example.test'),
        (Address('a"b', "example.test"), '"a\\"b"@example.test'),
        (Address("a\\b", "example.test"), '"a\\\\b"@example.test'),
        (Address("a..b", "example.test"), '"a..b"@example.test'),
        (Address(".a", "example.test"), '".a"@example.test'),
        (Address("", "example.test"), '""@example.test'),
        (Address("a@b", "example.test"), '"a@b"@example.test'),
        (Address("u", "[192.0.2.1]"), "u@[192.0.2.1]"),
        (Address("postmaster", ""), "postmaster"),
        (Address("PostMaster", ""), "PostMaster"),
    ],
)
def test_address_str_requotes(address: Address, text: str) -> None:
    assert str(address) == text


@pytest.mark.parametrize(
    ("local", "expected"),
    [("postmaster", True), ("POSTMASTER", True), ("PostMaster", True), ("postmistress", False)],
)
def test_is_postmaster(local: str, expected: bool) -> None:
    assert Address(local, "").is_postmaster is expected
    assert Address(local, "example.test").is_postmaster is expected


def test_address_is_frozen() -> None:
    address = Address("a", "b")
    with pytest.raises(AttributeError):
        address.local_part = "c"  # type: ignore[misc]


# qtextSMTP / quoted-pairSMTP cover printable ASCII and space: any such local part survives
# being written out by Address.__str__ and parsed back.
_LOCAL_PARTS = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)


@given(local=_LOCAL_PARTS)
def test_address_str_round_trips(local: str) -> None:
    address = Address(local, "example.test")
    assert parse_mailbox(str(address)) == address


# -- parse_path ------------------------------------------------------------------------------


def _mail(argument: str, *, classic: bool = False) -> tuple[Address | None, str, str]:
    path = parse_path(argument, keyword="FROM", for_recipient=False, classic=classic)
    return path.address, path.raw, path.rest


def _rcpt(argument: str, *, classic: bool = False) -> tuple[Address | None, tuple[str, ...], str]:
    path = parse_path(argument, keyword="TO", for_recipient=True, classic=classic)
    return path.address, path.route, path.raw


def _refusal(argument: str, *, recipient: bool = False, classic: bool = False) -> Reply:
    with pytest.raises(CommandError) as caught:
        parse_path(
            argument,
            keyword="TO" if recipient else "FROM",
            for_recipient=recipient,
            classic=classic,
        )
    return caught.value.reply


def test_path_plain() -> None:
    assert _mail("FROM:<a@b.test>") == (Address("a", "b.test"), "<a@b.test>", "")


def test_path_keyword_is_case_insensitive_and_space_after_colon_is_accepted() -> None:
    assert _mail("from:<a@b.test>")[0] == Address("a", "b.test")
    assert _mail("From: <a@b.test>")[0] == Address("a", "b.test")
    assert _mail("FROM:   <a@b.test>")[0] == Address("a", "b.test")


def test_path_null_reverse_path() -> None:
    assert _mail("FROM:<>") == (None, "<>", "")


def test_path_rest_holds_parameters() -> None:
    assert _mail("FROM:<a@b.test> SIZE=10 BODY=8BITMIME")[2] == " SIZE=10 BODY=8BITMIME"


def test_path_quoted_local_part_with_brackets_inside() -> None:
    address, raw, rest = _mail('FROM:<"a>b"@example.test> SIZE=1')
    assert address == Address("a>b", "example.test")
    assert raw == '<"a>b"@example.test>'
    assert rest == " SIZE=1"


def test_path_source_route_is_kept_apart_from_the_mailbox() -> None:
    address, route, raw = _rcpt("TO:<@a.test,@b.test:user@c.test>")
    assert address == Address("user", "c.test")
    assert route == ("a.test", "b.test")
    assert raw == "<@a.test,@b.test:user@c.test>"


def test_path_postmaster_any_case() -> None:
    assert _rcpt("TO:<Postmaster>")[0] == Address("Postmaster", "")
    assert _rcpt("TO:<postmaster>")[0] == Address("postmaster", "")
    assert _rcpt("TO:<POSTMASTER@example.test>")[0] == Address("POSTMASTER", "example.test")


def test_path_postmaster_without_domain_is_only_for_recipients() -> None:
    assert _refusal("FROM:<postmaster>") == replies.BAD_SENDER_SYNTAX


@pytest.mark.parametrize(
    ("argument", "text"),
    [
        ("FROM<a@b.test>", "Syntax: MAIL FROM:<address> [parameters]"),
        ("TO:<a@b.test>", "Syntax: MAIL FROM:<address> [parameters]"),
        ("FRM:<a@b.test>", "Syntax: MAIL FROM:<address> [parameters]"),
        ("FROM:<a@b.test>SIZE=1", "Syntax: MAIL FROM:<address> [parameters]"),
        ("FROM:a@b.test", "Syntax: MAIL FROM:<address>: the address must be in <>"),
        ("FROM:", "Syntax: MAIL FROM:<address>: the address must be in <>"),
        ("FROM:<a@b.test", "Syntax: MAIL FROM:<address>: missing '>'"),
        ('FROM:<"a>@b.test', "Syntax: MAIL FROM:<address>: missing '>'"),
        ("FROM:<(comment)a@b.test>", "Syntax: comments are not allowed in a path (RFC 5321 4.1.2)"),
        ("FROM:<(Ralph Martin)>", "Syntax: comments are not allowed in a path (RFC 5321 4.1.2)"),
    ],
)
def test_path_syntax_errors_are_501(argument: str, text: str) -> None:
    assert _refusal(argument) == Reply.of(501, text, "5.5.4")


def test_path_usage_names_the_verb_and_keyword() -> None:
    assert _refusal("FROM:<a@b.test>", recipient=True) == Reply.of(
        501, "Syntax: RCPT TO:<address> [parameters]", "5.5.4"
    )


def test_path_quoted_parenthesis_is_not_a_comment() -> None:
    assert _mail('FROM:<"(x)"@b.test>')[0] == Address("(x)", "b.test")


@pytest.mark.parametrize(
    "argument",
    ["FROM:< >", "FROM:<a@>", "FROM:<a>", "FROM:<@a.test:>", "FROM:<@a..test:u@b.test>"],
)
def test_path_bad_sender_mailbox_is_553_5_1_7(argument: str) -> None:
    assert _refusal(argument) == Reply.of(553, "Bad sender address syntax", "5.1.7")


@pytest.mark.parametrize(
    "argument",
    [
        "TO:<>",
        "TO:<bob>",
        "TO:<@a.test u@b.test>",
        "TO:<@a.test,b.test:u@c.test>",
        "TO:<@[192.0.2.1]:u@c.test>",  # At-domain takes a Domain, not a literal
        "TO:<postmaster@>",
    ],
)
def test_path_bad_recipient_mailbox_is_553_5_1_3(argument: str) -> None:
    assert _refusal(argument, recipient=True) == Reply.of(
        553, "Bad recipient address syntax", "5.1.3"
    )


def test_path_length_limit_is_256_octets_with_brackets() -> None:
    # RFC 5321 4.5.3.1.3: 256 octets "including the punctuation and element separators".
    domain = ".".join(["d" * 60] * 4)  # 243 octets
    local = "l" * (MAX_PATH - 2 - 1 - len(domain))
    path = f"<{local}@{domain}>"
    assert len(path) == MAX_PATH
    assert _mail(f"FROM:{path}")[0] == Address(local, domain)
    longer = f"<{local}x@{domain}>"
    assert _refusal(f"FROM:{longer}") == Reply.of(
        501, "Path too long (RFC 5321 4.5.3.1.3)", "5.5.4"
    )


def test_classic_path_without_brackets() -> None:
    address, raw, rest = _mail("FROM:dave@cs.cf.ac.uk SIZE=5", classic=True)
    assert address == Address("dave", "cs.cf.ac.uk")
    assert raw == "dave@cs.cf.ac.uk"
    assert rest == " SIZE=5"


def test_classic_comment_only_path_is_the_null_sender() -> None:
    assert _mail("From: <(Ralph Martin)>", classic=True) == (None, "<(Ralph Martin)>", "")


def test_classic_comments_are_removed_around_a_mailbox() -> None:
    address, raw, _ = _mail("FROM:<(Ralph (the) Martin) ralph@cs.cf.ac.uk>", classic=True)
    assert address == Address("ralph", "cs.cf.ac.uk")
    assert raw == "<(Ralph (the) Martin) ralph@cs.cf.ac.uk>"


def test_classic_comment_with_closing_bracket_inside() -> None:
    address, raw, rest = _mail("FROM:<(a > b)x@y.test> SIZE=1", classic=True)
    assert address == Address("x", "y.test")
    assert raw == "<(a > b)x@y.test>"
    assert rest == " SIZE=1"


# -- parse_parameters: esmtp-param *(SP esmtp-param) --------------------------------------------


def test_parameters_keywords_are_upper_cased_values_kept() -> None:
    assert parse_parameters(" size=100 Body=8bitmime X-FLAG") == {
        "SIZE": "100",
        "BODY": "8bitmime",
        "X-FLAG": None,
    }


def test_parameters_empty() -> None:
    assert parse_parameters("") == {}
    assert parse_parameters("   ") == {}


def test_parameters_doubled_spaces_are_tolerated() -> None:
    assert parse_parameters("A=1  B=2") == {"A": "1", "B": "2"}


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("=1", "=1"),
        ("-A=1", "-A=1"),
        ("A=", "A="),
        ("A=b=c", "A=b=c"),
        ("A_B=1", "A_B=1"),
        ("_" + "v" * 60, "_" + "v" * 39 + "..."),  # the echo is cut at 40 characters
    ],
)
def test_parameters_bad_syntax_is_501(text: str, shown: str) -> None:
    with pytest.raises(CommandError) as caught:
        parse_parameters(text)
    assert caught.value.reply == Reply.of(501, f"Bad parameter syntax: {shown}", "5.5.4")


def test_parameters_duplicate_any_case_is_501() -> None:
    with pytest.raises(CommandError) as caught:
        parse_parameters("SIZE=1 size=2")
    assert caught.value.reply == Reply.of(501, "Parameter SIZE given twice", "5.5.4")


def test_command_error_message_is_the_reply_text() -> None:
    error = CommandError(replies.BAD_SENDER_SYNTAX)
    assert str(error) == "Bad sender address syntax"
    assert error.reply is replies.BAD_SENDER_SYNTAX
