"""``RedactedRequest``: what provider adapters accept, and only this package can build.

Calling the class raises ``TypeError``; it is no dataclass, so ``dataclasses.replace`` refuses it;
its attributes are read-only; copying gives back the same object, pickling is refused and it
cannot be subclassed. The package's ``_build`` is the one way in (Python cannot stop code that
reaches for ``object.__new__`` on purpose; this keeps every ordinary path closed).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NoReturn

from tenant_runtime.gateway.messages import ChatMessage

_FIELDS = ("model", "messages", "max_tokens", "temperature", "top_p", "stop", "stream", "counts")


class RedactedRequest:
    """A ``ChatRequest`` whose texts (messages and stop strings) went through redaction, and
    ``counts``: how many entities of each type were replaced, e.g. {"EMAIL": 2}."""

    __slots__ = _FIELDS

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    temperature: float | None
    top_p: float | None
    stop: tuple[str, ...]
    stream: bool
    counts: Mapping[str, int]

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("A RedactedRequest is built only by tenant_runtime.redaction."
                        "redact_request, so that nothing unredacted reaches a provider.")

    def __init_subclass__(cls, **kwargs: object) -> NoReturn:
        raise TypeError("RedactedRequest cannot be subclassed: adapters must receive only what "
                        "tenant_runtime.redaction.redact_request built.")

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"RedactedRequest is read-only; {name!r} cannot be set.")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"RedactedRequest is read-only; {name!r} cannot be deleted.")

    def __copy__(self) -> RedactedRequest:
        return self  # immutable: a copy is the same request

    def __deepcopy__(self, memo: dict[int, Any]) -> RedactedRequest:
        return self

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("A RedactedRequest cannot be pickled; build it again with "
                        "redact_request where it is needed.")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RedactedRequest):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in _FIELDS if f != "counts") \
            and dict(self.counts) == dict(other.counts)

    def __hash__(self) -> int:
        return hash((self.model, self.messages, self.stop))

    def __repr__(self) -> str:  # the texts here are already redacted
        return (f"RedactedRequest(model={self.model!r}, messages={self.messages!r}, "
                f"max_tokens={self.max_tokens!r}, temperature={self.temperature!r}, "
                f"top_p={self.top_p!r}, stop={self.stop!r}, stream={self.stream!r}, "
                f"counts={dict(self.counts)!r})")


def _build(*, model: str, messages: tuple[ChatMessage, ...], max_tokens: int,
           temperature: float | None, top_p: float | None, stop: tuple[str, ...], stream: bool,
           counts: Mapping[str, int]) -> RedactedRequest:
    request = object.__new__(RedactedRequest)
    values = {"model": model, "messages": tuple(messages), "max_tokens": max_tokens,
              "temperature": temperature, "top_p": top_p, "stop": tuple(stop),
              "stream": stream, "counts": MappingProxyType(dict(counts))}
    for name, value in values.items():
        object.__setattr__(request, name, value)
    return request
