"""Properties: for any text (lone surrogates included, as a JSON body can carry them),
restore(redact(text)) == text; and under the standard profile no injected e-mail address, SSN
or card number survives, however it is written."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from tenant_runtime.gateway.messages import ChatMessage, ChatRequest
from tenant_runtime.redaction import Profile, redact_request, redact_text

PROFILES = [Profile.named("standard"), Profile.named("aggressive")]
SETTINGS = settings(max_examples=200, deadline=None)


def luhn_complete(prefix: str) -> str:
    for check in "0123456789":
        digits = prefix + check
        total = sum(int(d) if i % 2 == 0 else (int(d) * 2 - 9 if int(d) > 4 else int(d) * 2)
                    for i, d in enumerate(reversed(digits)))
        if total % 10 == 0:
            return digits
    raise AssertionError


label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
emails = st.builds(lambda local, dom, tld: f"{local}@{dom}.{tld}",
                   st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,12}[a-z0-9]", fullmatch=True), label,
                   st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=5))
ssns = st.builds(lambda a, g, s: f"{a:03d}-{g:02d}-{s:04d}",
                 st.integers(1, 899).filter(lambda a: a != 666), st.integers(1, 99),
                 st.integers(1, 9999))
cards = st.builds(lambda prefix, sep: sep.join(luhn_complete(prefix)[i:i + 4]
                                               for i in range(0, 16, 4)),
                  st.text("0123456789", min_size=15, max_size=15), st.sampled_from(["", " ", "-"]))
phones = st.sampled_from(["555-123-4567", "(212) 555-0173", "+1 415 555 2671",
                          "+44 20 7946 0958"])
names = st.sampled_from(["Maria Lopez", "Dr. Okafor", "my name is Zed", "John Q. Public"])
placeholders = st.sampled_from(["[EMAIL_1]", "[SSN_1]", "[PERSON_2]", "[CARD_1", "[TERM_1]"])


def fullwidth(value: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in value)


@st.composite
def disguised(draw, values):
    """A value as written: plain, fullwidth, or with a zero-width character inside."""
    value = draw(values)
    how = draw(st.sampled_from(["plain", "plain", "fullwidth", "hidden"]))
    if how == "fullwidth":
        return fullwidth(value)
    if how == "hidden":
        at = draw(st.integers(1, len(value) - 1))
        return value[:at] + draw(st.sampled_from("\u200b\u200c\u200d\u2060\ufeff\u00ad")) + \
            value[at:]
    return value


secret = st.one_of(disguised(emails), disguised(ssns), disguised(cards))
fragment = st.one_of(st.text(max_size=30), secret, disguised(phones), names, placeholders)


@SETTINGS
@given(st.text())
def test_round_trip_any_text(text):
    for profile in PROFILES:
        result = redact_text(text, profile)
        assert result.restorer.restore(result.text) == text


# JSON can carry what UTF-8 cannot: "\ud800" in a request body decodes to a lone surrogate,
# which st.text() never draws. Any Python string a caller can send, then.
any_character = st.one_of(st.characters(), st.characters(categories=["Cs"]))


@SETTINGS
@given(st.lists(st.one_of(st.text(any_character, max_size=10), placeholders, secret),
                max_size=8))
def test_round_trip_any_string_a_json_body_can_carry(parts):
    text = "".join(parts)
    for profile in PROFILES:
        result = redact_text(text, profile)
        assert result.restorer.restore(result.text) == text


@SETTINGS
@given(st.lists(fragment, max_size=12))
def test_round_trip_and_no_secret_left(fragments):
    text = " ".join(fragments)
    for profile in PROFILES:
        result = redact_text(text, profile)
        assert result.restorer.restore(result.text) == text
        entities = result.entities
        assert all(0 <= e.start < e.end <= len(text) for e in entities)
        assert all(a.end <= b.start for a, b in zip(entities, entities[1:], strict=False))
    standard = redact_text(text, PROFILES[0])
    for value in fragments:
        if value in text and secret_like(value):
            assert value not in standard.text


def secret_like(value: str) -> bool:
    plain = unicodedata.normalize("NFKC", value)
    plain = "".join(c for c in plain if c not in "\u200b\u200c\u200d\u2060\ufeff\u00ad")
    return any(strategy_matches(plain))


def strategy_matches(plain: str) -> Iterator[bool]:
    yield re.fullmatch(r"[a-z0-9][a-z0-9._+-]{0,12}[a-z0-9]@[a-z0-9]{1,8}\.[a-z]{2,5}",
                       plain) is not None
    yield re.fullmatch(r"\d{3}-\d{2}-\d{4}", plain) is not None and plain[:3] not in (
        "000", "666") and plain[0] != "9" and plain[4:6] != "00" and plain[7:] != "0000"
    yield re.fullmatch(r"\d{16}|\d{4}( \d{4}){3}|\d{4}(-\d{4}){3}", plain) is not None


@SETTINGS
@given(st.lists(st.text(max_size=40), min_size=1, max_size=4), st.lists(secret, max_size=3))
def test_request_round_trip(contents, values):
    messages = tuple(ChatMessage("user", c + " " + " ".join(values)) for c in contents)
    request = ChatRequest(model="m", max_tokens=1, messages=messages, stop=tuple(values))
    redacted, restorer = redact_request(request, PROFILES[0])
    for message, sent in zip(request.messages, redacted.messages, strict=True):
        assert restorer.restore(sent.content) == message.content
    for stop, sent_stop in zip(request.stop, redacted.stop, strict=True):
        assert restorer.restore(sent_stop) == stop
        assert sent_stop != stop
