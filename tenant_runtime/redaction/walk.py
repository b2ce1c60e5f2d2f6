"""Every place a gateway request can carry text, visited in one fixed order: tool definitions,
the structured-output schema, the messages (their text, tool-call arguments, tool results and
plain-text documents), then the stop strings. ``redact_request`` visits them twice (once to
learn which placeholder-like strings the caller wrote, once to replace values), so both passes
see the same texts in the same order, and a conversation resent with one more turn gives every
value the placeholder it had before (placeholders are numbered by first appearance).

What is never visited: images and non-text documents (the tenant's image policy decides whether
they may leave), thinking blocks (their signature covers their text; they only ever hold what a
model saw), tool names and JSON keys (a program's identifiers, which the model must call back
unchanged).

JSON texts (tool-call arguments) are visited value by value: each string, and each integer of
seven digits or more (a phone, card or account number written as a number). A number found to
hold a value becomes the placeholder string, so the arguments stay valid JSON; on the way back
the original digits come back as a JSON string.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tenant_runtime.gateway.content import (
    Block,
    Document,
    OutputFormat,
    Text,
    Tool,
    ToolCall,
    ToolResult,
)
from tenant_runtime.gateway.messages import ChatMessage, ChatRequest

Visit = Callable[[str], str]  # a text in, the text to send out
SCHEMA_TEXT_KEYS = frozenset({"description", "title"})
SCHEMA_VALUE_KEYS = frozenset({"enum", "const", "default", "examples"})
NUMBER_DIGITS = 7


def visit_request(request: ChatRequest, visit: Visit) -> ChatRequest:
    """The request with ``visit`` applied to each of its texts; parts with no changed text are
    kept as they were (the same objects)."""
    tools = tuple(_tool(tool, visit) for tool in request.tools)
    output = _output(request.output, visit) if request.output else None
    messages = tuple(_message(m, visit) for m in request.messages)
    stop = tuple(visit(text) for text in request.stop)
    return replace(request, tools=tools, output=output, messages=messages, stop=stop)


def _tool(tool: Tool, visit: Visit) -> Tool:
    description = visit(tool.description) if tool.description else tool.description
    parameters = visit_schema(tool.parameters, visit)
    if description is tool.description and parameters is tool.parameters:
        return tool
    return replace(tool, description=description, parameters=parameters)


def _output(output: OutputFormat, visit: Visit) -> OutputFormat:
    description = visit(output.description) if output.description else output.description
    schema = visit_schema(output.schema, visit) if output.schema is not None else None
    if description is output.description and schema is output.schema:
        return output
    return replace(output, description=description, schema=schema)


def visit_schema(schema: Any, visit: Visit) -> Any:
    """A JSON Schema with its descriptions, titles and string enum, const, default and example
    values visited; property names and every other keyword kept."""
    if isinstance(schema, list):
        items = [visit_schema(item, visit) for item in schema]
        return schema if all(a is b for a, b in zip(items, schema, strict=True)) else items
    if not isinstance(schema, dict):
        return schema
    changed = False
    out: dict[str, Any] = {}
    for key, value in schema.items():
        new: Any
        if key in SCHEMA_TEXT_KEYS and isinstance(value, str):
            new = visit(value)
        elif key in SCHEMA_VALUE_KEYS:
            new = _visit_values(value, visit)
        elif key == "properties" and isinstance(value, dict):  # names are keys, not text
            props = {name: visit_schema(sub, visit) for name, sub in value.items()}
            new = value if all(props[n] is value[n] for n in value) else props
        else:
            new = visit_schema(value, visit)
        changed = changed or new is not value
        out[key] = new
    return out if changed else schema


def _visit_values(value: Any, visit: Visit) -> Any:
    if isinstance(value, str):
        return visit(value)
    if isinstance(value, list):
        items = [_visit_values(item, visit) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, dict):
        found = {k: _visit_values(v, visit) for k, v in value.items()}
        return value if all(found[k] is value[k] for k in value) else found
    return value


def _message(message: ChatMessage, visit: Visit) -> ChatMessage:
    if isinstance(message.content, str):
        content = visit(message.content)
        return message if content is message.content else ChatMessage(message.role, content)
    blocks = tuple(_block(block, visit) for block in message.content)
    if all(a is b for a, b in zip(blocks, message.content, strict=True)):
        return message
    return ChatMessage(message.role, blocks)


def _block(block: Block, visit: Visit) -> Block:
    if isinstance(block, Text):
        text = visit(block.text)
        return block if text is block.text else Text(text)
    if isinstance(block, ToolCall):
        arguments = visit_json_text(block.arguments, visit)
        return block if arguments is block.arguments else replace(block, arguments=arguments)
    if isinstance(block, ToolResult):
        content = tuple(_block(part, visit) for part in block.content)
        if all(a is b for a, b in zip(content, block.content, strict=True)):
            return block
        return replace(block, content=content)  # type: ignore[arg-type]
    if isinstance(block, Document):
        data = visit(block.data) if block.source == "text" else block.data
        title = visit(block.title) if block.title else block.title
        context = visit(block.context) if block.context else block.context
        if data is block.data and title is block.title and context is block.context:
            return block
        return replace(block, data=data, title=title, context=context)
    return block  # images, thinking: never visited


def visit_json_text(text: str, visit: Visit) -> str:
    """JSON text with its string values (and long integers) visited, keys kept; text that is
    not JSON is visited whole."""
    try:
        value = json.loads(text)
    except ValueError:
        return visit(text)
    new = visit_json_value(value, visit)
    return text if new is value else json.dumps(new, ensure_ascii=False)


def visit_json_value(value: Any, visit: Visit) -> Any:
    if isinstance(value, str):
        return visit(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) >= 10 ** (NUMBER_DIGITS - 1):
        digits = str(value)
        out = visit(digits)
        return value if out is digits or out == digits else out
    if isinstance(value, list):
        items = [visit_json_value(item, visit) for item in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, dict):
        found = {k: visit_json_value(v, visit) for k, v in value.items()}
        return value if all(found[k] is value[k] for k in value) else found
    return value
