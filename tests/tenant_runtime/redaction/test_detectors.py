"""Each detector: values it must find, near-misses it must leave, and normalization."""

from __future__ import annotations

import pytest

from tenant_runtime.redaction import Profile, redact_text

STANDARD = Profile.named("standard")
AGGRESSIVE = Profile.named("aggressive")


def found(text: str, profile: Profile = STANDARD) -> list[tuple[str, str]]:
    """(type, original value) of each entity, checking the redaction round-trips."""
    result = redact_text(text, profile)
    assert result.restorer.restore(result.text) == text
    return [(e.type, text[e.start:e.end]) for e in result.entities]


@pytest.mark.parametrize("value", [
    "jane.doe@example.com", "j_smith+tag@mail.co.uk", "o'neil@example.org", "x@sub.example.io",
])
def test_email(value):
    assert found(f"Write to {value}, please.") == [("EMAIL", value)]


@pytest.mark.parametrize("text", ["user@localhost", "an @ sign", "foo@bar", "a@b.c"])
def test_email_near_misses(text):
    assert found(text) == []


@pytest.mark.parametrize("value", [
    "555-123-4567", "(555) 123-4567", "555.123.4567", "555 123 4567", "+1 555 123 4567",
    "+1-555-123-4567", "1-800-555-1234", "+1 (555) 123-4567", "2125550173", "+15551234567",
    "+44 20 7946 0958", "+33 1 42 68 53 00", "+49 (0)30 1234567", "+442079460958",
])
def test_phone(value):
    assert found(f"Call {value} today.") == [("PHONE", value)]


@pytest.mark.parametrize("text", [
    "order 1234567890 shipped",  # bare ten digits, not a valid NANP number
    "version 555-123-45678", "2024-01-15", "call +44 12", "pi is 3.14159",
])
def test_phone_near_misses(text):
    assert found(text) == []


@pytest.mark.parametrize("text, value", [
    ("SSN 123-45-6789", "123-45-6789"),
    ("my social security number is 123456789", "123456789"),
    ("SSN: 123 45 6789.", "123 45 6789"),
    ("id 078-05-1120 here", "078-05-1120"),
])
def test_ssn(text, value):
    assert found(text) == [("SSN", value)]


@pytest.mark.parametrize("text", [
    "SSN 000-12-3456", "SSN 666-12-3456", "SSN 900-12-3456", "SSN 999-12-3456",
    "SSN 123-00-4567", "SSN 123-45-0000",
    "invoice 123456789",  # nine digits without an SSN cue
    "ref 123 45 6789",  # spaced without a cue
    "SSN 123-45-67890",
])
def test_ssn_near_misses(text):
    assert found(text) == []


def test_ein():
    assert found("EIN 12-3456789 on file") == [("EIN", "12-3456789")]


@pytest.mark.parametrize("text", ["EIN 00-1234567", "EIN 07-1234567", "EIN 96-1234567",
                                  "code 12-34567890"])
def test_ein_near_misses(text):
    assert found(text) == []


@pytest.mark.parametrize("value", [
    "4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "378282246310005",
    "3782 822463 10005", "5555555555554444", "6011111111111117", "4222222222222",
])
def test_card(value):
    assert found(f"card {value} exp 12/29") == [("CARD", value)]


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112",  # fails Luhn
    "card 4111111111111112",
    "card 4111 1111-1111 1111",  # mixed separators
    "number 123456789012",  # twelve digits
])
def test_card_near_misses(text):
    assert [t for t, _ in found(text)] == []


@pytest.mark.parametrize("text, value", [
    ("Please ask Maria Lopez about it.", "Maria Lopez"),
    ("Michael called twice.", "Michael"),
    ("forwarded by John Q. Public yesterday", "John Q. Public"),
    ("Dr. Okafor will see you", "Okafor"),
    ("Ms Jane Doe signed", "Jane Doe"),
    ("Prof. Adeyemi Balogun teaches", "Adeyemi Balogun"),
    ("Hello, my name is Zorblax and I need help", "Zorblax"),
    ("I'm Ngozi Adeyemi, the new lead", "Ngozi Adeyemi"),
    ("Signed, Thaddeus", "Thaddeus"),
    ("patient Ngozi Okafor was admitted", "Ngozi Okafor"),
    ("please contact Ifeoma Eze for access", "Ifeoma Eze"),
    ("Grace Kelly arrived", "Grace Kelly"),  # an ordinary word, confirmed by a surname
    ("Sarah's laptop", "Sarah"),
])
def test_person(text, value):
    assert found(text) == [("PERSON", value)]


@pytest.mark.parametrize("text", [
    "Kubernetes Deployment failed again.",  # capitalized, in no list, at a sentence start
    "The Quarterly Report is due.",
    "Grace is a virtue. Hope helps. June is warm.",  # name-words with no surname or cue
    "Will you send the NASA API docs?",
    "Please contact Support for access",
    "Smith",  # a surname alone
])
def test_person_near_misses(text):
    assert found(text) == []


def test_aggressive_adds_capitalized_pairs_not_at_a_sentence_start():
    text = "Yesterday we met Chidi Anozie at the office. Quarterly Numbers were good."
    assert found(text, STANDARD) == []
    assert found(text, AGGRESSIVE) == [("PERSON", "Chidi Anozie")]


@pytest.mark.parametrize("text, kind, value", [
    ("ship to 1234 Elm Street today", "ADDRESS", "1234 Elm Street"),
    ("lives at 55 W 5th Ave, Apt 2 now", "ADDRESS", "55 W 5th Ave, Apt 2"),
    ("office 700 Sunset Blvd. Suite 400", "ADDRESS", "700 Sunset Blvd. Suite 400"),
    ("server 192.168.10.25 is down", "IP", "192.168.10.25"),
    ("host 2001:db8::8a2e:370:7334 up", "IP", "2001:db8::8a2e:370:7334"),
    ("loopback ::1 only", "IP", "::1"),
    ("DOB: 03/15/1985", "DOB", "03/15/1985"),
    ("date of birth 1985-03-15", "DOB", "1985-03-15"),
    ("she was born on March 3, 1985.", "DOB", "March 3, 1985"),
])
def test_aggressive_detectors(text, kind, value):
    assert found(text, STANDARD) == []
    assert found(text, AGGRESSIVE) == [(kind, value)]


@pytest.mark.parametrize("text", [
    "meeting at 10:30:45 sharp", "version 1.2.3 released", "octet 256.1.1.1 is invalid",
    "the deadline is 03/15/2025", "we have 12 apples on the street",
])
def test_aggressive_near_misses(text):
    assert found(text, AGGRESSIVE) == []


def test_fullwidth_digits_are_found_and_offsets_point_at_the_original():
    text = "SSN １２３-４５-６７８９ and card ４１１１ １１１１ １１１１ １１１１."
    result = redact_text(text, STANDARD)
    assert result.text == "SSN [SSN_1] and card [CARD_1]."
    ssn, card = result.entities
    assert text[ssn.start:ssn.end] == "１２３-４５-６７８９"
    assert text[card.start:card.end] == "４１１１ １１１１ １１１１ １１１１"
    assert result.restorer.restore(result.text) == text


def test_zero_width_characters_do_not_hide_a_value():
    text = "mail j\u200bohn@exa\u00admple.com or 555\u2060-123-4567\ufeff ok"
    result = redact_text(text, STANDARD)
    assert result.text == "mail [EMAIL_1] or [PHONE_1]\ufeff ok"
    email, phone = result.entities
    assert text[email.start:email.end] == "j\u200bohn@exa\u00admple.com"
    assert text[phone.start:phone.end] == "555\u2060-123-4567"


def test_everything_but_the_entities_stays_byte_identical():
    text = "Café ＡＢＣ — ½ cup; write to ｊane@example.com, ﬁne ligature, e\u0301 done"
    result = redact_text(text, STANDARD)
    [email] = result.entities
    assert text[email.start:email.end] == "ｊane@example.com"
    assert result.text == text[:email.start] + "[EMAIL_1]" + text[email.end:]


def test_overlapping_values_become_one_entity():
    # a name run into an e-mail address: the whole of it goes, none of the address escapes
    text = "ask Maria John@example.com"
    result = redact_text(text, STANDARD)
    assert "example.com" not in result.text
    assert result.restorer.restore(result.text) == text


def test_off_profile_changes_nothing():
    text = "john@example.com 123-45-6789"
    result = redact_text(text, Profile.named("off"))
    assert (result.text, result.entities) == (text, [])
