"""Profiles: the presets, custom terms and patterns, their validation and time bound."""

from __future__ import annotations

import time

import pytest

from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.gateway.messages import ChatMessage, ChatRequest
from tenant_runtime.redaction import (
    DETECTORS,
    PROFILES,
    Profile,
    RedactionTimeout,
    redact_request,
    redact_text,
)


def test_presets():
    assert PROFILES == ("off", "standard", "aggressive", "custom")
    assert Profile.named("off").detectors == frozenset()
    assert Profile.named("standard").detectors == {"email", "phone", "ssn", "ein", "card",
                                                   "person"}
    assert Profile.named("aggressive").detectors > Profile.named("standard").detectors
    assert set(Profile.named("aggressive").detectors) <= set(DETECTORS)
    assert Profile.named("standard") is Profile.named("standard")


@pytest.mark.parametrize("make", [
    lambda: Profile.named("paranoid"),
    lambda: Profile.named("custom"),
    lambda: Profile("standard", frozenset({"email"})),
    lambda: Profile("standard", terms=("x",)),
])
def test_bad_profiles_are_refused(make):
    with pytest.raises(TenantInvalidInput):
        make()


def test_custom_detectors_terms_and_patterns():
    profile = Profile.custom(detectors=["email"], terms=["Bluebird", "ACME-7"],
                             patterns=[r"\bINC-\d{4,}\b"])
    text = "Project bluebird (BLUEBIRDS is not it) for acme-7: a@b.com, INC-20931, 123-45-6789"
    result = redact_text(text, profile)
    assert result.text == ("Project [TERM_1] (BLUEBIRDS is not it) for [TERM_2]: [EMAIL_1], "
                           "[PATTERN_1], 123-45-6789")
    assert result.restorer.restore(result.text) == text


def test_custom_terms_match_after_normalization():
    profile = Profile.custom(terms=["bluebird"])
    assert redact_text("ＢＬＵＥ\u200bBIRD", profile).text == "[TERM_1]"


def test_from_settings():
    assert Profile.from_settings("standard", ["email"], ["x"], ["y+"]) is \
        Profile.named("standard")
    custom = Profile.from_settings("custom", ["ssn"], None, None)
    assert custom.detectors == {"ssn"} and custom.terms == () and custom.patterns == ()
    assert Profile.from_settings("custom", ["ssn"], [], []) is custom  # compiled once


@pytest.mark.parametrize("kwargs, message", [
    ({"detectors": ["email", "retina"]}, "Unknown redaction detector retina"),
    ({"patterns": ["a*"]}, "can match an empty string"),
    ({"patterns": [r"\b"]}, "can match an empty string"),
    ({"patterns": ["x|"]}, "can match an empty string"),
    ({"patterns": ["(unclosed"]}, "is not a valid regular expression"),
    ({"patterns": ["x" * 201]}, "longer than 200 characters"),
    ({"patterns": [f"p{n}" for n in range(21)]}, "at most 20 custom patterns"),
    ({"terms": [f"t{n}" for n in range(201)]}, "at most 200 custom terms"),
    ({"terms": ["  "]}, "Custom term 1 is empty"),
])
def test_custom_validation(kwargs, message):
    with pytest.raises(TenantInvalidInput, match=message):
        Profile.custom(**kwargs)


def test_a_catastrophic_pattern_times_out_quickly():
    profile = Profile.custom(patterns=[r"(a+)+$"])
    started = time.perf_counter()
    with pytest.raises(RedactionTimeout, match=r"\(a\+\)\+\$") as caught:
        redact_text("a" * 5000 + "b", profile)
    # the pattern's 50 ms budget, and a busy machine's scheduling; unbounded it runs for ages
    assert time.perf_counter() - started < 2
    assert isinstance(caught.value, TenantInvalidInput) and caught.value.status_code == 422


def test_a_timeout_refuses_the_whole_request():
    request = ChatRequest(model="m", max_tokens=1,
                          messages=(ChatMessage("user", "a" * 5000 + "b"),))
    with pytest.raises(RedactionTimeout):
        redact_request(request, Profile.custom(detectors=["email"], patterns=[r"(a|aa)+$"]))


def test_profile_repr_hides_terms():
    assert "Bluebird" not in repr(Profile.custom(terms=["Bluebird"]))
