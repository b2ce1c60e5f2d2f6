"""A tool call's arguments are redacted at every depth with one placeholder book, and the
result's placeholders are restored."""

from __future__ import annotations

from tenant_runtime.redaction import Profile
from tenant_runtime.redaction.arguments import redact_arguments, restore_value


def test_every_string_at_every_depth_is_redacted_and_restored():
    arguments = {"to": "jane.doe@example.com", "count": 3, "flag": True,
                 "nested": {"cc": ["jane.doe@example.com", "bob@example.org"],
                            "note": "SSN 123-45-6789"}}
    redacted, restorer, counts = redact_arguments(arguments, Profile.named("standard"))
    text = repr(redacted)
    for value in ("jane.doe@example.com", "bob@example.org", "123-45-6789"):
        assert value not in text
    assert redacted["to"] == redacted["nested"]["cc"][0] == "[EMAIL_1]"
    assert redacted["count"] == 3 and redacted["flag"] is True
    assert counts["EMAIL"] == 3
    result = {"content": [{"type": "text", "text": f"sent to {redacted['to']}"}]}
    assert restore_value(result, restorer) == {
        "content": [{"type": "text", "text": "sent to jane.doe@example.com"}]}


def test_a_literal_placeholder_in_the_arguments_is_never_handed_out():
    redacted, restorer, _ = redact_arguments({"a": "[EMAIL_1]", "b": "x@example.com"},
                                             Profile.named("standard"))
    assert redacted["b"] == "[EMAIL_2]"
    assert restore_value(redacted, restorer) == {"a": "[EMAIL_1]", "b": "x@example.com"}


def test_a_later_redaction_of_the_same_exchange_hands_out_new_placeholders_and_restores_both():
    profile = Profile.named("standard")
    first, restorer, _ = redact_arguments({"to": "jane.doe@example.com"}, profile)
    answer, both, _ = redact_arguments({"email": "bob@example.org",
                                        "again": "jane.doe@example.com"}, profile,
                                       after=restorer)
    assert first == {"to": "[EMAIL_1]"}
    assert answer == {"email": "[EMAIL_2]", "again": "[EMAIL_3]"}  # none stands for two
    assert restore_value("[EMAIL_1] [EMAIL_2] [EMAIL_3]", both) == (
        "jane.doe@example.com bob@example.org jane.doe@example.com")
