"""``RedactedRequest`` and ``RedactedEmbedding``: what provider adapters accept, and only this
package can build.

Calling either class raises ``TypeError``; they are no dataclasses, so ``dataclasses.replace``
refuses them; their attributes are read-only; copying gives back the same object, pickling is
refused and they cannot be subclassed. The package's ``_build`` is the one way in (Python cannot
stop code that reaches for ``object.__new__`` on purpose; this keeps every ordinary path closed).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, NoReturn, TypeVar

from tenant_runtime.gateway.content import OutputFormat, Tool, ToolChoice
from tenant_runtime.gateway.messages import ChatMessage, Sampling

_R = TypeVar("_R", bound="_Sealed")


class _Sealed:
    """The read-only machinery both request kinds share."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()
    _final: ClassVar[bool] = False

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError(f"A {type(self).__name__} is built only by tenant_runtime.redaction "
                        "(redact_request, redact_embedding), so that nothing unredacted reaches "
                        "a provider.")

    def __init_subclass__(cls, **kwargs: object) -> None:
        if any(getattr(base, "_final", False) for base in cls.__mro__[1:]):
            raise TypeError(f"{cls.__mro__[1].__name__} cannot be subclassed: adapters must "
                            "receive only what tenant_runtime.redaction built.")
        super().__init_subclass__(**kwargs)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is read-only; {name!r} cannot be set.")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is read-only; {name!r} cannot be deleted.")

    def __copy__(self: _R) -> _R:
        return self  # immutable: a copy is the same request

    def __deepcopy__(self: _R, memo: dict[int, Any]) -> _R:
        return self

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(f"A {type(self).__name__} cannot be pickled; build it again with "
                        "tenant_runtime.redaction where it is needed.")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.model))  # type: ignore[attr-defined]

    def __repr__(self) -> str:  # the texts here are already redacted
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{type(self).__name__}({fields})"


class RedactedRequest(_Sealed):
    """A ``ChatRequest`` whose texts went through redaction (messages, tool arguments and
    results, tool and schema descriptions, stop strings), and ``counts``: how many entities of
    each type were replaced, e.g. {"EMAIL": 2}."""

    _fields = ("model", "messages", "max_tokens", "temperature", "top_p", "stop", "stream",
               "tools", "tool_choice", "parallel_tool_calls", "output", "n", "sampling",
               "counts")
    __slots__ = _fields
    _final = True

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    temperature: float | None
    top_p: float | None
    stop: tuple[str, ...]
    stream: bool
    tools: tuple[Tool, ...]
    tool_choice: ToolChoice | None
    parallel_tool_calls: bool | None
    output: OutputFormat | None
    n: int
    sampling: Sampling
    counts: Mapping[str, int]


class RedactedEmbedding(_Sealed):
    """An embeddings request whose inputs went through redaction."""

    _fields = ("model", "inputs", "dimensions", "encoding_format", "counts")
    __slots__ = _fields
    _final = True

    model: str
    inputs: tuple[str, ...]
    dimensions: int | None
    encoding_format: str | None
    counts: Mapping[str, int]


def _build(kind: type[_R], **values: Any) -> _R:
    if set(values) != set(kind._fields):
        raise TypeError(f"{kind.__name__} takes exactly {', '.join(kind._fields)}.")
    request = object.__new__(kind)
    for name, value in values.items():
        if name == "counts":
            value = MappingProxyType(dict(value))
        elif isinstance(value, list):
            value = tuple(value)
        object.__setattr__(request, name, value)
    return request
