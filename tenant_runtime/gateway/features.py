"""What each provider's wire format can carry, and the one check every call passes before a
route is tried: a request asking for something a route's provider cannot take is not sent
there with the field dropped. A route that cannot take it is skipped (a fallback that can is
tried); when no route of the chain can, the call is refused (422) with a sentence naming the
field and the provider.

                        openai / azure-openai / on-prem   anthropic        bedrock (Converse)
    tools, tool calls   yes                               yes              yes
    tool_choice none    yes                               yes              no (leave tools out)
    parallel_tool_calls yes                               yes (as disable_parallel_tool_use: no)
    images, URL         yes                               yes              no (bytes only)
    images, base64      yes                               yes              yes
    image detail low,
    high                yes                               no               no
    documents           no                                yes              no
    response_format     yes                               json_schema only no
    n > 1               yes (not streamed)                no               no
    seed, penalties,
    logit_bias,
    logprobs            yes                               no               no
    reasoning_effort    yes                               yes (effort)     no
    thinking            no                                yes              no
    temperature, top_p  yes                               no (API version  yes
                                                          2026-10-21 answers
                                                          400 to any value)
    top_k               on-prem only                      no (likewise)    Anthropic models
                                                                           only (as
                                                                           additionalModel-
                                                                           RequestFields)
    a turn other than
    system              optional                          required         required
    tool-call arguments
    not a JSON object   yes (sent as written)             no (input is a   no
                                                          JSON object)
    tool calls in the
    history, no tools   yes                               yes              no (toolConfig is
                                                                           required with them)
"""

from __future__ import annotations

import json

from tenant_runtime.gateway.content import (
    Document,
    Image,
    RedactedThinking,
    Thinking,
    ToolCall,
    ToolResult,
)
from tenant_runtime.gateway.messages import ChatRequest

OPENAI_SHAPED = frozenset({"openai", "azure-openai", "on-prem"})
NEEDS_A_TURN = "messages (a user or assistant turn)"
OPENAI_ONLY_SAMPLING = ("seed", "presence_penalty", "frequency_penalty", "logit_bias",
                        "logprobs", "top_logprobs")


def _blocks(request: ChatRequest) -> set[type]:
    kinds: set[type] = set()
    for message in request.messages:
        if isinstance(message.content, str):
            continue
        for block in message.content:
            kinds.add(type(block))
            if hasattr(block, "content") and isinstance(block.content, tuple):
                kinds.update(type(part) for part in block.content)
    return kinds


def _images(request: ChatRequest) -> list[Image]:
    """The request's images, those inside tool results included."""
    found: list[Image] = []
    for message in request.messages:
        for block in message.blocks:
            parts = block.content if hasattr(block, "content") else (block,)
            found.extend(part for part in (parts if isinstance(parts, tuple) else ())
                         if isinstance(part, Image))
    return found


def _url_images(request: ChatRequest) -> bool:
    return any(image.source == "url" and not image.data.startswith("data:")
               for image in _images(request))


def _image_detail(request: ChatRequest) -> bool:
    """Whether an image asks for a ``detail`` other than ``auto`` (OpenAI's alone)."""
    return any(image.detail not in (None, "auto") for image in _images(request))


def _not_objects(request: ChatRequest) -> bool:
    """Whether a tool call of the history has arguments that are not a JSON object ("" is {})."""
    for message in request.messages:
        for block in message.blocks:
            if isinstance(block, ToolCall) and block.arguments.strip():
                try:
                    value = json.loads(block.arguments)
                except ValueError:
                    return True
                if not isinstance(value, dict):
                    return True
    return False


def bedrock_anthropic(model: str) -> bool:
    """Whether a Bedrock model id (a foundation model, a cross-region inference profile such as
    ``us.anthropic.claude-…``, or an ARN naming one) is one of Anthropic's models, which take
    ``top_k`` among their additional request fields."""
    return "anthropic.claude" in model


def unsupported(request: ChatRequest, provider: str, model: str = "") -> list[str]:
    """The fields of ``request`` that ``provider`` (serving its model id ``model``) cannot take,
    as the caller's API names them (empty: the route can serve it)."""
    asked = set(request.sampling.asked())
    kinds = _blocks(request)
    out: list[str] = []
    if provider in OPENAI_SHAPED:
        if Document in kinds:
            out.append("document")
        if "thinking" in asked or Thinking in kinds or RedactedThinking in kinds:
            out.append("thinking")
        if "top_k" in asked and provider != "on-prem":
            out.append("top_k")
        if request.n > 1 and request.stream:
            out.append("n")
        return out
    if not any(m.role != "system" for m in request.messages):
        out.append(NEEDS_A_TURN)
    if _image_detail(request):
        out.append("image_url.detail (low or high; leave it out or send auto)")
    out.extend(name for name in OPENAI_ONLY_SAMPLING if name in asked)
    if request.n > 1:
        out.append("n")
    if ToolCall in kinds and _not_objects(request):
        out.append("tool_calls (arguments that are not a JSON object)")
    if provider == "anthropic":
        out.extend(name for name, value in (("temperature", request.temperature),
                                            ("top_p", request.top_p),
                                            ("top_k", request.sampling.top_k))
                   if value is not None)
        if request.output is not None and request.output.kind != "json_schema":
            out.append("response_format (json_object)")
        return out
    # bedrock
    if "top_k" in asked and not bedrock_anthropic(model):
        out.append("top_k (Bedrock takes it for Anthropic's models only)")
    for name in ("reasoning_effort", "thinking"):
        if name in asked:
            out.append(name)
    if Thinking in kinds or RedactedThinking in kinds:
        out.append("thinking")
    if Document in kinds:
        out.append("document")
    if request.output is not None:
        out.append("response_format")
    if request.parallel_tool_calls is False:
        out.append("parallel_tool_calls")
    if request.tool_choice is not None and request.tool_choice.mode == "none":
        out.append("tool_choice (none)")
    if not request.tools and (ToolCall in kinds or ToolResult in kinds):
        out.append("tools (Bedrock needs the tool definitions when the history holds tool "
                   "calls)")
    if _url_images(request):
        out.append("image_url (an https URL: Bedrock takes image bytes only)")
    return out
