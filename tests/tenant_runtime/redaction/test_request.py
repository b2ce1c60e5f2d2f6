"""RedactedRequest can only come out of redact_request."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from tenant_runtime.gateway.messages import ChatMessage, ChatRequest
from tenant_runtime.redaction import Profile, RedactedRequest, redact_request

REQUEST = ChatRequest(model="gpt-test", max_tokens=64, temperature=0.2, top_p=0.9, stream=True,
                      stop=("END",),
                      messages=(ChatMessage("system", "Be brief."),
                                ChatMessage("user", "I am Maria Lopez, SSN 123-45-6789.")))


def redacted() -> RedactedRequest:
    return redact_request(REQUEST, Profile.named("standard"))[0]


def test_redact_request_keeps_everything_but_the_values():
    r = redacted()
    assert (r.model, r.max_tokens, r.temperature, r.top_p, r.stream, r.stop) == \
        ("gpt-test", 64, 0.2, 0.9, True, ("END",))
    assert r.messages == (ChatMessage("system", "Be brief."),
                          ChatMessage("user", "I am [PERSON_1], SSN [SSN_1]."))
    assert dict(r.counts) == {"PERSON": 1, "SSN": 1}
    assert "Maria" not in repr(r) and "6789" not in repr(r)


def test_off_profile_passes_texts_through():
    r, restorer = redact_request(REQUEST, Profile.named("off"))
    assert r.messages == REQUEST.messages and dict(r.counts) == {}
    assert restorer.restore("[PERSON_1]") == "[PERSON_1]"


def test_the_class_cannot_be_called():
    with pytest.raises(TypeError, match="built only by tenant_runtime.redaction"):
        RedactedRequest(model="m", messages=REQUEST.messages, max_tokens=1, temperature=None,
                        top_p=None, stop=(), stream=False)


def test_dataclasses_replace_is_refused():
    with pytest.raises(TypeError):
        dataclasses.replace(redacted(), messages=REQUEST.messages)  # type: ignore[type-var]


def test_copy_replace_is_refused():
    # copy.replace (Python 3.13+) works through __replace__, which the class does not have
    assert not hasattr(RedactedRequest, "__replace__")
    replace = getattr(copy, "replace", None)
    if replace is not None:
        with pytest.raises(TypeError):
            replace(redacted(), messages=REQUEST.messages)


def test_copies_are_the_same_read_only_object():
    r = redacted()
    assert copy.copy(r) is r and copy.deepcopy(r) is r
    with pytest.raises(AttributeError):
        r.messages = REQUEST.messages  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del r.messages
    with pytest.raises(TypeError):
        r.counts["SSN"] = 0  # type: ignore[index]
    with pytest.raises(TypeError):
        pickle.dumps(r)


def test_it_cannot_be_subclassed():
    with pytest.raises(TypeError):
        type("Forged", (RedactedRequest,), {})
