"""The fake model: every protocol reduces its request to a ``Conversation`` and asks
``answer()`` what the model says. The rules are in the package docstring; they are the
contract gateway tests rely on."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

IMAGE_TOKENS = 85  # what one image (or any non-text part: file, audio, PDF) adds to input tokens


def tokens_for(characters: int) -> int:
    return characters // 4 + 1


@dataclass(frozen=True)
class ToolCall:
    """A tool call a test scripts: ``arguments`` is the JSON text sent as is."""
    name: str
    arguments: str = "{}"


@dataclass(frozen=True)
class Reply:
    """A scripted answer: text, tool calls, or both (text first)."""
    text: str = ""
    calls: tuple[ToolCall, ...] = ()


Scripted = str | ToolCall | Reply | list[ToolCall] | tuple[ToolCall, ...]


def as_reply(item: Scripted) -> Reply:
    if isinstance(item, Reply):
        return item
    if isinstance(item, str):
        return Reply(text=item)
    if isinstance(item, ToolCall):
        return Reply(calls=(item,))
    if isinstance(item, list | tuple) and all(isinstance(c, ToolCall) for c in item):
        return Reply(calls=tuple(item))
    raise TypeError(f"cannot script {item!r}: give text, a ToolCall, a list of them or a Reply")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    schema: dict[str, Any]

    @property
    def characters(self) -> int:
        return (len(self.name) + len(self.description)
                + len(json.dumps(self.schema, separators=(",", ":"), sort_keys=True)))

    def arguments_for(self, text: str) -> str:
        return json.dumps(fill_schema(self.schema, text, default_key="input"))


@dataclass(frozen=True)
class Call:
    """A tool call the model makes."""
    id: str
    name: str
    arguments: str  # JSON text

    def input(self) -> Any:
        """The arguments as a JSON value (Anthropic's and Bedrock's ``input``); {} when a
        scripted call's text is not a JSON object."""
        try:
            value = json.loads(self.arguments)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass
class Conversation:
    """A request reduced to what the model's behaviour depends on."""
    characters: int = 0
    images: int = 0
    tools: list[Tool] = field(default_factory=list)
    choice: str = "auto"  # auto, none, required (any), tool
    forced_name: str | None = None  # with choice "tool"
    parallel: bool = True
    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    max_tokens: Any = None
    stop: list[str] = field(default_factory=list)
    last_user: str = ""
    turn: str = ""  # who spoke last: user, results, assistant
    results: list[str] = field(default_factory=list)

    def system(self, text: str) -> None:
        self.characters += len(text)

    def message(self, role: str, text: str = "", *, results: Iterable[str] = (),
                calls: Iterable[tuple[str, str]] = (), images: int = 0) -> None:
        """One message in order. ``results`` are tool results' texts (OpenAI's tool role,
        Anthropic's tool_result blocks, Bedrock's toolResult), ``calls`` (name, arguments)."""
        results, calls = list(results), list(calls)
        self.characters += (len(text) + sum(len(r) for r in results)
                            + sum(len(n) + len(a) for n, a in calls))
        self.images += images
        if role in ("system", "developer"):
            return
        if role == "assistant":
            self.turn, self.results = "assistant", []
        elif results:  # a message carrying tool results is a results turn, text or not
            if self.turn != "results":
                self.results = []
            self.results += results
            self.turn = "results"
        else:
            self.turn, self.last_user, self.results = "user", text, []

    def tool(self, name: str, description: str | None, schema: Any) -> None:
        tool = Tool(name, description or "", schema if isinstance(schema, dict) else {})
        self.tools.append(tool)
        self.characters += tool.characters

    @property
    def input_tokens(self) -> int:
        return tokens_for(self.characters) + IMAGE_TOKENS * self.images


@dataclass
class Answer:
    text: str
    calls: list[Call]
    thinking: str | None
    input_tokens: int
    output_tokens: int
    truncated: bool  # cut by max_tokens
    stop_sequence: str | None  # the stop sequence that cut it

    @property
    def stop_reason(self) -> str:  # Anthropic's and Bedrock's words
        if self.truncated:
            return "max_tokens"
        if self.stop_sequence is not None:
            return "stop_sequence"
        return "tool_use" if self.calls else "end_turn"

    @property
    def finish_reason(self) -> str:  # OpenAI's
        if self.truncated:
            return "length"
        return "tool_calls" if self.calls else "stop"


def answer(conversation: Conversation, *, reply: str | None, scripted: Reply | None,
           n_tool_calls: int, new_id: Callable[[int], str], thinking: bool = False) -> Answer:
    """What the model says (the rules of the package docstring)."""
    c = conversation
    wanted: list[tuple[str, str]] = []
    if scripted is not None:
        text, wanted = scripted.text, [(t.name, t.arguments) for t in scripted.calls]
    elif c.tools and c.choice != "none" and (c.choice != "auto" or c.turn != "results"):
        chosen = [t for t in c.tools if t.name == c.forced_name] if c.choice == "tool" else []
        count = max(1, n_tool_calls) if c.parallel else 1
        tools = chosen or c.tools
        wanted = [(t.name, t.arguments_for(c.last_user))
                  for t in (tools[i % len(tools)] for i in range(count))]
        text = ""
    elif c.turn == "results":
        text = "Tool said: " + "\n".join(c.results)
    elif c.json_schema is not None or c.json_object:
        said = reply if reply is not None else "You said: " + c.last_user
        text = json.dumps(fill_schema(c.json_schema or {}, said, default_key="answer",
                                      all_properties=True))
    else:
        text = reply if reply is not None else "You said: " + c.last_user
    matched = None
    for sequence in c.stop:
        if sequence and sequence in text:
            text, matched = text[: text.index(sequence)], sequence
    truncated = False
    if (isinstance(c.max_tokens, int) and c.max_tokens > 0
            and tokens_for(len(text)) > c.max_tokens):
        text, truncated, matched = text[: c.max_tokens * 4 - 1], True, None
    calls = [Call(new_id(i), name, arguments) for i, (name, arguments) in enumerate(wanted)]
    thought = ("Let me think about: " + c.last_user) if thinking else None
    out = len(text) + sum(len(k.name) + len(k.arguments) for k in calls) + len(thought or "")
    return Answer(text, calls, thought, c.input_tokens, tokens_for(out), truncated, matched)


# -- JSON schemas ----------------------------------------------------------------------------

def _resolve(schema: Any, defs: dict[str, Any]) -> dict[str, Any]:
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 20:
        schema = defs.get(schema["$ref"].rsplit("/", 1)[-1], {})
        seen += 1
    return schema if isinstance(schema, dict) else {}


def _kind(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return kind if isinstance(kind, str) else None


def _minimal(schema: Any, defs: dict[str, Any]) -> Any:
    schema = _resolve(schema, defs)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _minimal(schema[key][0], defs)
    kind = _kind(schema)
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        return {name: _minimal(sub, defs) for name, sub in properties.items() if name in required}
    return {"string": "", "integer": 0, "number": 0, "boolean": False, "array": [],
            "null": None}.get(kind or "", None)


def fill_schema(schema: dict[str, Any], text: str, *, default_key: str,
                all_properties: bool = False) -> dict[str, Any]:
    """An object for ``schema`` whose first string property holds ``text`` (``default_key``
    when it has none); the other required properties (all of them with ``all_properties``) get
    minimal values: "", 0, false, [], null, the first enum value, nested objects likewise."""
    defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    root = _resolve(schema, defs)
    properties = root.get("properties") or {}
    required = root.get("required") or []
    first = next((name for name, sub in properties.items()
                  if _kind(_resolve(sub, defs)) == "string"
                  and "enum" not in _resolve(sub, defs) and "const" not in _resolve(sub, defs)),
                 None)
    value: dict[str, Any] = {}
    for name, sub in properties.items():
        if name == first:
            value[name] = text
        elif all_properties or name in required:
            value[name] = _minimal(sub, defs)
    if first is None:
        value[default_key] = text
    return value
