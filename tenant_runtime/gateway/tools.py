"""The tenant's tool rules and image policy, as the call path applies them.

A tool rule names tools by function name with a glob (``delete_*``, ``github.*``) and lists the
models they may be offered to; a rule that lists no model forbids the tools outright. A request
offering a tool that a matching rule does not allow for its model is refused (403, audited as a
scope denial) before anything is sent. The first matching rule decides.

Images are not scanned for personal data: the image policy says whether they may leave at all.
``allow`` or ``refuse``; unset, it follows the redaction profile (refused under ``aggressive``,
allowed otherwise).
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.gateway.content import Choice, Document, Image, ToolResult
from tenant_runtime.gateway.messages import ChatRequest

IMAGE_POLICIES = ("allow", "refuse")
MAX_RULES = 200
TOOL_GLOB = re.compile(r"^[A-Za-z0-9_.:*?\-\[\]]{1,128}$")


@dataclass(frozen=True)
class ToolRule:
    tool: str  # a glob over function names
    models: tuple[str, ...]  # the models the tools may be offered to; () forbids them

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.tool)


def parse_rules(raw: Iterable[Any]) -> tuple[ToolRule, ...]:
    """Rules as stored (``[{"tool": ..., "models": [...]}]``), checked: a bad rule is refused
    with a sentence that names it."""
    rules = []
    for n, item in enumerate(raw, 1):
        if not isinstance(item, dict) or not isinstance(item.get("tool"), str):
            raise TenantInvalidInput(f"Tool rule {n} must name a tool.")
        tool = item["tool"].strip()
        if not TOOL_GLOB.match(tool):
            raise TenantInvalidInput(f"Tool rule {n}: {tool[:40]!r} is not a tool name or glob "
                                     "(letters, digits, _ . : - and the wildcards * ? [ ]).")
        models = item.get("models") or []
        if not isinstance(models, list) or not all(isinstance(m, str) and m.strip()
                                                   for m in models):
            raise TenantInvalidInput(f"Tool rule {n}: models must be a list of model names.")
        rules.append(ToolRule(tool, tuple(m.strip() for m in models)))
    if len(rules) > MAX_RULES:
        raise TenantInvalidInput(f"At most {MAX_RULES} tool rules.")
    return tuple(rules)


def parse_rules_text(text: str) -> tuple[ToolRule, ...]:
    """The dashboard's form: one rule a line, ``glob`` (forbidden) or ``glob: model, model``
    (a colon followed by a space separates: tool names may hold colons)."""
    raw = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tool, _, models = (line + " ").partition(": ")
        raw.append({"tool": tool.strip(),
                    "models": [m.strip() for m in models.split(",") if m.strip()]})
    return parse_rules(raw)


def rules_text(rules: Iterable[ToolRule]) -> str:
    return "\n".join(rule.tool + (": " + ", ".join(rule.models) if rule.models else "")
                     for rule in rules)


def refused_tools(request: ChatRequest, rules: tuple[ToolRule, ...]) -> list[str]:
    """The names of the tools the request offers that the rules do not allow for its model."""
    refused = []
    for tool in request.tools:
        rule = next((r for r in rules if r.matches(tool.name)), None)
        if rule is not None and request.model not in rule.models:
            refused.append(tool.name)
    return refused


def images_allowed(policy: str | None, profile_name: str) -> bool:
    if policy is None:
        return profile_name != "aggressive"
    return policy == "allow"


def count_images(request: ChatRequest) -> int:
    """Images and non-text documents in the request (neither is scanned)."""
    count = 0
    for message in request.messages:
        for block in message.blocks:
            parts = block.content if isinstance(block, ToolResult) else (block,)
            count += sum(1 for part in parts if isinstance(part, Image)
                         or (isinstance(part, Document) and part.source != "text"))
    return count


def tool_call_counts(choices: Iterable[Choice]) -> dict[str, int]:
    """How many times the model called each tool: names and counts, never arguments."""
    return dict(Counter(call.name for choice in choices for call in choice.tool_calls))
