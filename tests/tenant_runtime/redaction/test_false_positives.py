"""What ``standard`` must leave alone: ordinary prose, version numbers, dates, invoice numbers,
places and products named after people, words in capitals, encoded text that holds no value.
The decoding layers and the case-insensitive name lookup must not cost these."""

from __future__ import annotations

import base64

import pytest

from tenant_runtime.redaction import Profile, redact_text

STANDARD = Profile.named("standard")

CLEAN = [
    # prose, with words that are also first names, in every case
    "The build will mark the release once the tests pass.",
    "We hope the new cache helps; grace periods apply to late invoices.",
    "Please review the pull request before Friday and leave comments inline.",
    "THE DEPLOYMENT WILL START AT NOON. PLEASE DO NOT MERGE ANYTHING.",
    "URGENT: SERVER DOWN IN REGION EU-WEST, FAILOVER IN PROGRESS",
    "carol singers sang in the hall while the jasmine bloomed.",
    "Summary: the retry logic is fine but the timeout is too long.",
    # version numbers
    "Upgrade from 1.2.3 to 1.2.4 before installing v10.4.12.",
    "Python 3.12.1, Node v20.11.0 and PostgreSQL 16.2 are supported.",
    "The API moved from version 2.0.0-beta.3 to 2.0.0-rc.1 last week.",
    # dates and times
    "The contract runs from 2024-01-15 to 2025-01-14.",
    "Due 03/15/2025, reminder on 15.03.2025 and again on 2025/03/20.",
    "Meeting on Jan 5, 2024 at 10:30; follow-up on 12 March 2024.",
    "Backups ran at 2024-06-01T02:00:00Z and 2024-06-02T02:00:00Z.",
    # invoice, order and ticket numbers
    "Invoice INV-2024-00017 for order 4471 was paid.",
    "Invoice #48213, PO 2024/0042, ticket OPS-1182 and case 00123456.",
    "Reference 2024-118-0042 and batch 77-1234 were reprocessed.",
    # numbers that are no values
    "The cluster handled 1234567 requests at 99.95% availability.",
    "Pi is 3.14159 and e is 2.71828; the ratio is 1.618.",
    "Total: $12,450.00 (tax 8.25%), 3 items, 2.5 kg.",
    # places, organizations and products named after people
    "We flew to San Francisco for the offsite.",
    "The team met in San Jose, then drove to Santa Clara.",
    "Offices in St. Louis, Lake Charles and Fort Worth.",
    "Join the call on Microsoft Teams at three.",
    "She studied at George Washington University.",
    "Their savings are with Charles Schwab and Morgan Stanley.",
    "Ask Claude or Amazon Alexa for the weather.",
    # markup and encodings that hold no value
    "Search https://example.com/find?q=hello%20world&lang=en for it.",
    "R&D and AT&T signed; Procter &amp; Gamble did not.",
    "The header is &lt;h1&gt;Welcome&lt;/h1&gt; &mdash; plain text.",
    f"Token {base64.b64encode(b'hello world, nothing here').decode()} is fine.",
    "Digest sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 ok.",
    "Request id 3fa85f64-5717-4562-b3fc-2c963f66afa6 failed once.",
    "Run configurationManager.initializeDefaults() before deploying.",
    # non-Latin prose
    "Мария и Сергей пришли на встречу в понедельник.",
    "Η συνάντηση είναι την Τρίτη στις δέκα.",
    "الاجتماع يوم ٣ في الساعة ١٠",
]


@pytest.mark.parametrize("text", CLEAN)
def test_clean_text_is_left_untouched(text):
    result = redact_text(text, STANDARD)
    assert (result.text, result.entities) == (text, [])


def test_san_francisco_is_a_place_but_francisco_alone_is_a_name():
    assert redact_text("We flew to San Francisco.", STANDARD).text == "We flew to San Francisco."
    assert redact_text("Francisco Diaz called.", STANDARD).text == "[PERSON_1] called."
