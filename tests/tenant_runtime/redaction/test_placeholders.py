"""Placeholders within a request, restoration, and restoration of a streamed answer."""

from __future__ import annotations

import pytest

from tenant_runtime.gateway.messages import ChatMessage, ChatRequest
from tenant_runtime.redaction import Profile, Restorer, redact_request, redact_text

STANDARD = Profile.named("standard")


def request(*contents: str, stop: tuple[str, ...] = ()) -> ChatRequest:
    return ChatRequest(model="gpt-test", max_tokens=100, stop=stop,
                       messages=tuple(ChatMessage("user", c) for c in contents))


def test_same_value_same_placeholder_across_messages_and_stop_strings():
    redacted, restorer = redact_request(request(
        "Mail ann@example.com and bob@example.com", "Again: ann@example.com, 555-123-4567",
        stop=("ann@example.com",)), STANDARD)
    assert [m.content for m in redacted.messages] == [
        "Mail [EMAIL_1] and [EMAIL_2]", "Again: [EMAIL_1], [PHONE_1]"]
    assert redacted.stop == ("[EMAIL_1]",)
    assert dict(redacted.counts) == {"EMAIL": 4, "PHONE": 1}
    assert restorer.restore("[EMAIL_2] wrote to [EMAIL_1] at [PHONE_1]") == \
        "bob@example.com wrote to ann@example.com at 555-123-4567"


def test_a_placeholder_already_in_the_text_is_never_used():
    text = "Literal [EMAIL_1] and [EMAIL_3] stay; mail a@example.com, b@example.com"
    result = redact_text(text, STANDARD)
    assert result.text == ("Literal [EMAIL_1] and [EMAIL_3] stay; mail [EMAIL_2], [EMAIL_4]")
    assert result.restorer.restore(result.text) == text


def test_a_placeholder_in_another_message_is_never_used():
    redacted, restorer = redact_request(request("mail a@example.com", "quote: [EMAIL_1]"),
                                        STANDARD)
    assert redacted.messages[0].content == "mail [EMAIL_2]"
    assert restorer.restore("[EMAIL_1] [EMAIL_2]") == "[EMAIL_1] a@example.com"


def test_restore_leaves_unknown_tokens():
    restorer = Restorer({"[EMAIL_1]": "a@example.com"})
    assert restorer.restore("[EMAIL_1] [EMAIL_2] [email_1] [NOPE_1] [EMAIL_1") == \
        "a@example.com [EMAIL_2] [email_1] [NOPE_1] [EMAIL_1"


def test_restore_is_one_pass():
    # an original that looks like another placeholder is not replaced again
    restorer = Restorer({"[TERM_1]": "[TERM_2]", "[TERM_2]": "secret"})
    assert restorer.restore("[TERM_1] [TERM_2]") == "[TERM_2] secret"


ORIGINALS = {"[EMAIL_1]": "ann@example.com", "[PERSON_12]": "Maria Lopez",
             "[PHONE_3]": "555-123-4567"}
ANSWER = "Dear [PERSON_12], we wrote to [EMAIL_1] [ and [PHONE_3]; [EMAIL_9] stays. [EMAIL_"
RESTORED = ("Dear Maria Lopez, we wrote to ann@example.com [ and 555-123-4567; [EMAIL_9] "
            "stays. [EMAIL_")


def stream(chunks: list[str]) -> tuple[str, list[str]]:
    streamer = Restorer(ORIGINALS).stream()
    emitted = [streamer.feed(chunk) for chunk in chunks]
    emitted.append(streamer.flush())
    return "".join(emitted), emitted


@pytest.mark.parametrize("cut", range(len(ANSWER) + 1))
def test_stream_with_every_split_position(cut):
    assert stream([ANSWER[:cut], ANSWER[cut:]])[0] == RESTORED


@pytest.mark.parametrize("first, second", [(a, b) for a in range(8, 22) for b in (a + 1, a + 5)])
def test_stream_with_a_placeholder_in_three_pieces(first, second):
    chunks = [ANSWER[:first], ANSWER[first:second], ANSWER[second:]]
    assert stream(chunks)[0] == RESTORED


def test_stream_one_character_at_a_time():
    text, emitted = stream(list(ANSWER))
    assert text == RESTORED
    # nothing of a placeholder is emitted before it is complete, and then it is the original
    assert "Maria Lopez" in emitted and not any(e.startswith("[PER") for e in emitted)


def test_stream_holds_back_only_what_may_become_a_placeholder():
    streamer = Restorer(ORIGINALS).stream()
    assert streamer.feed("see [EMA") == "see "
    assert streamer.feed("IL_1] and [x") == "ann@example.com and [x"
    assert streamer.feed(" [PERSON_1") == " "
    assert streamer.feed("2]") == "Maria Lopez"
    assert streamer.feed("[PHONE_") == ""
    assert streamer.flush() == "[PHONE_"


def test_stream_without_placeholders_passes_chunks_through():
    streamer = Restorer({}).stream()
    assert streamer.feed("[EMAIL_") == "[EMAIL_"
    assert streamer.flush() == ""


def test_the_map_does_not_show_in_reprs():
    result = redact_text("mail ann@example.com", STANDARD)
    assert "ann@" not in repr(result) and "ann@" not in repr(result.restorer)
    assert "ann@" not in repr(result.restorer.stream())
