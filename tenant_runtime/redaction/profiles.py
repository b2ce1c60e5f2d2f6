"""Redaction profiles: which detectors run, plus a tenant's own terms and patterns.

    off         nothing is redacted
    standard    email, phone, ssn, ein, card, person
    aggressive  standard + address, ip, dob, name_pair (two capitalized words in a row that do
                not start a sentence)
    custom      the detectors the tenant picks, its literal terms and its regular expressions
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.redaction import custom
from tenant_runtime.redaction.detectors import StructuredDetector, structured_detector

DETECTORS = ("email", "phone", "ssn", "ein", "card", "person", "address", "ip", "dob",
             "name_pair")
PROFILES = ("off", "standard", "aggressive", "custom")
STANDARD = frozenset({"email", "phone", "ssn", "ein", "card", "person"})
AGGRESSIVE = STANDARD | {"address", "ip", "dob", "name_pair"}
_PRESETS = {"off": frozenset[str](), "standard": STANDARD, "aggressive": AGGRESSIVE}


@dataclass(frozen=True)
class Profile:
    """Build with ``Profile.named``, ``Profile.custom`` or ``Profile.from_settings``; the
    constructor checks the same rules, so no profile breaks them."""

    name: str
    detectors: frozenset[str] = frozenset()
    terms: tuple[str, ...] = field(default=(), repr=False)  # may be confidential (code names)
    patterns: tuple[str, ...] = ()
    _structured: StructuredDetector = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name not in PROFILES:
            raise TenantInvalidInput(f"There is no redaction profile {self.name!r}; choose "
                                     f"one of {', '.join(PROFILES)}.")
        # normalize the containers, so equal profiles compare and hash equal
        object.__setattr__(self, "detectors", frozenset(self.detectors))
        object.__setattr__(self, "terms", tuple(self.terms))
        object.__setattr__(self, "patterns", tuple(self.patterns))
        unknown = sorted(self.detectors - set(DETECTORS))
        if unknown:
            raise TenantInvalidInput(f"Unknown redaction detector {', '.join(unknown)}; choose "
                                     f"from {', '.join(DETECTORS)}.")
        if self.name != "custom":
            if self.detectors and self.detectors != _PRESETS[self.name]:
                raise TenantInvalidInput(f"The {self.name!r} profile has fixed detectors; use "
                                         "the 'custom' profile to choose them.")
            if self.terms or self.patterns:
                raise TenantInvalidInput("Only the 'custom' redaction profile takes terms and "
                                         "patterns; choose 'custom' to add them.")
            object.__setattr__(self, "detectors", _PRESETS[self.name])
        custom.check_terms(self.terms)
        custom.check_patterns(self.patterns)
        object.__setattr__(self, "_structured", structured_detector(self.detectors))

    @classmethod
    def named(cls, name: str) -> Profile:
        """"off", "standard" or "aggressive"."""
        if name == "custom":
            raise TenantInvalidInput("The 'custom' redaction profile is built with "
                                     "Profile.custom(detectors=..., terms=..., patterns=...).")
        return _named(name)

    @classmethod
    def custom(cls, detectors: frozenset[str] | set[str] | list[str] | tuple[str, ...] = (),
               terms: list[str] | tuple[str, ...] = (),
               patterns: list[str] | tuple[str, ...] = ()) -> Profile:
        return _custom(frozenset(detectors), tuple(terms), tuple(patterns))

    @classmethod
    def from_settings(cls, name: str, detectors: list[str] | None, terms: list[str] | None,
                      patterns: list[str] | None) -> Profile:
        """The profile a tenant's stored gateway settings describe; detectors, terms and
        patterns count only for "custom"."""
        if name == "custom":
            return cls.custom(detectors or (), terms or (), patterns or ())
        return cls.named(name)

    @property
    def structured(self) -> StructuredDetector:
        return self._structured


@lru_cache(maxsize=8)
def _named(name: str) -> Profile:
    return Profile(name)


@lru_cache(maxsize=256)  # the gateway builds the profile per call; compile once
def _custom(detectors: frozenset[str], terms: tuple[str, ...],
            patterns: tuple[str, ...]) -> Profile:
    return Profile("custom", detectors, terms, patterns)
