"""Tool-call arguments and structured output carry personal data inside JSON strings. Properties:
redacting the string values of a JSON object and restoring the model's copy gives back the same
object, with any characters in the values (quotes, backslashes, control characters, unicode),
and the same holds when the model's JSON text arrives in fragments split at every boundary.
Plus: the same value keeps its placeholder on every turn of a conversation, and thinking blocks
and JSON keys are never touched."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tenant_runtime.gateway.content import Text, Thinking, Tool, ToolCall, ToolResult
from tenant_runtime.gateway.messages import ChatMessage, ChatRequest
from tenant_runtime.redaction import Profile, redact_request

STANDARD = Profile.named("standard")
SETTINGS = settings(max_examples=150, deadline=None)

# values a caller's tool may carry, around an e-mail address the detectors find
awkward = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
values = st.builds(lambda a, b: f'{a}O"Brien \\ line\n{b} x.y@example.com {a}', awkward, awkward)


def _tool_call_request(arguments: dict[str, object]) -> ChatRequest:
    return ChatRequest("m", (
        ChatMessage("user", "go"),
        ChatMessage("assistant", (ToolCall("c1", "lookup", json.dumps(arguments)),)),
        ChatMessage("user", (ToolResult("c1", (Text("done"),)),))), 10)


@SETTINGS
@given(st.dictionaries(st.text(min_size=1, max_size=5), values, min_size=1, max_size=3))
def test_restore_of_redacted_arguments_is_the_original(arguments):
    redacted, restorer = redact_request(_tool_call_request(arguments), STANDARD)
    call = redacted.messages[1].content[0]
    assert "x.y@example.com" not in call.arguments
    assert json.loads(restorer.restore_json(call.arguments)) == arguments


@SETTINGS
@given(values)
def test_streamed_arguments_restore_at_every_split(value):
    arguments = {"to": value}
    redacted, restorer = redact_request(_tool_call_request(arguments), STANDARD)
    sent = redacted.messages[1].content[0].arguments  # what the model would write back
    for cut in range(len(sent) + 1):
        stream = restorer.stream(json=True)
        out = stream.feed(sent[:cut]) + stream.feed(sent[cut:]) + stream.flush()
        assert json.loads(out) == arguments, cut


def test_restored_value_cannot_inject_json():
    hostile = 'a@b.co", "admin": true, "x": "'
    redacted, restorer = redact_request(_tool_call_request({"to": hostile}), STANDARD)
    restored = json.loads(restorer.restore_json(redacted.messages[1].content[0].arguments))
    assert restored == {"to": hostile}
    assert "admin" not in restored


def test_numbers_that_hold_a_value_become_placeholder_strings():
    arguments = {"card": 4111111111111111, "count": 3}
    redacted, restorer = redact_request(_tool_call_request(arguments), STANDARD)
    sent = json.loads(redacted.messages[1].content[0].arguments)
    assert sent["count"] == 3 and sent["card"].startswith("[CARD_")
    assert json.loads(restorer.restore_json(json.dumps(sent))) == {"card": "4111111111111111",
                                                                     "count": 3}


def test_the_same_value_keeps_its_placeholder_on_every_turn():
    first = (ChatMessage("user", "Write to ann@example.com"),)
    turn1, _ = redact_request(ChatRequest("m", first, 10), STANDARD)
    history = first + (ChatMessage("assistant", "Writing to ann@example.com now."),
                       ChatMessage("user", "Also bob@example.com and ann@example.com"))
    turn2, _ = redact_request(ChatRequest("m", history, 10), STANDARD)
    assert turn1.messages[0] == turn2.messages[0]
    assert turn2.messages[1].content == "Writing to [EMAIL_1] now."
    assert turn2.messages[2].content == "Also [EMAIL_2] and [EMAIL_1]"


def test_tools_schemas_and_results_are_redacted_keys_and_thinking_are_not():
    thinking = Thinking("The user ann@example.com wants it", "sig==")
    request = ChatRequest("m", (
        ChatMessage("user", "hi"),
        ChatMessage("assistant", (thinking, ToolCall("c1", "mail", '{"ann@example.com": 1}'))),
        ChatMessage("user", (ToolResult("c1", (Text("sent to ann@example.com"),)),))), 10,
        tools=(Tool("mail", "Mails ann@example.com", {
            "type": "object", "properties": {"ann@example.com": {
                "type": "string", "description": "e.g. ann@example.com",
                "enum": ["ann@example.com", "other"]}}}),))
    redacted, _ = redact_request(request, STANDARD)
    tool = redacted.tools[0]
    assert tool.description == "Mails [EMAIL_1]"
    prop = tool.parameters["properties"]["ann@example.com"]  # a key: kept
    assert prop["description"] == "e.g. [EMAIL_1]" and prop["enum"] == ["[EMAIL_1]", "other"]
    assert redacted.messages[1].content[0] is thinking  # signed: passed unchanged
    assert redacted.messages[1].content[1].arguments == '{"ann@example.com": 1}'
    assert redacted.messages[2].content[0].content[0].text == "sent to [EMAIL_1]"
    assert redacted.counts["EMAIL"] == 4
