"""The reference upstream the conformance suite's server scenarios run through Magistrate
against: a real MCP server built with the official SDK's ``MCPServer``, offering the tools,
resources and prompts the scenarios name (``test_simple_text``, ``test://static-text``,
``test_simple_prompt`` …), as the suite's "everything" server describes them. Served stateful
(``Mcp-Session-Id``), so its elicitation and sampling requests can be answered and its
resource updates reach a subscriber.

Server-to-client traffic is sent through the session's typed requests and notifications
(``send_request``, ``send_notification``), not the SDK's helpers that warn of the
capabilities' deprecation in a later revision."""

from __future__ import annotations

import base64
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.session import ServerSession
from mcp.shared.message import ServerMessageMetadata

WATCHED = "test://watched-resource"

# a 1×1 PNG and a tiny WAV, the payloads of the image and audio scenarios
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQ"
                       "GAhKmMIQAAAABJRU5ErkJggg==")
WAV = ("UklGRiQAAABXQVZFZm10IBAAAAABAAEAESsAACJWAAACABAAZGF0YQAAAAA=")


async def _log(ctx: Context, text: str) -> None:
    await ctx.request_context.session.send_notification(
        types.LoggingMessageNotification(params=types.LoggingMessageNotificationParams(
            level="info", data=text)), related_request_id=ctx.request_id)


async def _ask(ctx: Context, request: Any, result_type: type[Any]) -> Any:
    return await ctx.request_context.session.send_request(
        request, result_type, metadata=ServerMessageMetadata(related_request_id=ctx.request_id))


async def _elicit(ctx: Context, message: str, schema: dict[str, Any]) -> types.ElicitResult:
    result: types.ElicitResult = await _ask(ctx, types.ElicitRequest(
        params=types.ElicitRequestFormParams(message=message, requested_schema=schema)),
        types.ElicitResult)
    return result


SEP1034 = {"type": "object", "properties": {
    "name": {"type": "string", "description": "User name", "default": "John Doe"},
    "age": {"type": "integer", "description": "User age", "default": 30},
    "score": {"type": "number", "description": "User score", "default": 95.5},
    "status": {"type": "string", "description": "User status",
               "enum": ["active", "inactive", "pending"], "default": "active"},
    "verified": {"type": "boolean", "description": "Verification status", "default": True}}}
SEP1330 = {"type": "object", "properties": {
    "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
    "titledSingle": {"type": "string", "oneOf": [
        {"const": "value1", "title": "First Option"}, {"const": "value2", "title": "Second Option"},
        {"const": "value3", "title": "Third Option"}]},
    "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                   "enumNames": ["Option One", "Option Two", "Option Three"]},
    "untitledMulti": {"type": "array",
                      "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
    "titledMulti": {"type": "array", "items": {"anyOf": [
        {"const": "value1", "title": "First Choice"}, {"const": "value2", "title": "Second Choice"},
        {"const": "value3", "title": "Third Choice"}]}}}}


def make_reference(seen: list[str] | None = None) -> MCPServer:
    """``seen``: where the elicitation tool writes what it sent and what it got back."""
    server = MCPServer("reference")
    subscribers: dict[str, list[ServerSession]] = {}

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
                        ) -> types.EmptyResult:
        subscribers.setdefault(params.uri, []).append(ctx.session)
        return types.EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any, Any],
                          params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        subscribers.pop(params.uri, None)
        return types.EmptyResult()

    # MCPServer offers no decorator for subscriptions; its low-level server takes the methods
    low = server._lowlevel_server
    low.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    low.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)

    @server.resource(WATCHED, mime_type="text/plain")
    def watched() -> str:
        """A resource whose updates a subscriber is told of."""
        return "watched content"

    @server.tool()
    async def test_update_watched() -> str:
        """Tells the subscribers of test://watched-resource that it changed."""
        for session in subscribers.get(WATCHED, []):
            await session.send_resource_updated(WATCHED)
        return f"told {len(subscribers.get(WATCHED, []))} subscribers"

    @server.tool()
    async def test_sampling(prompt: str, ctx: Context) -> str:
        """Tests LLM sampling from the client."""
        result = await _ask(ctx, types.CreateMessageRequest(params=types.CreateMessageRequestParams(
            messages=[types.SamplingMessage(role="user", content=types.TextContent(
                type="text", text=prompt))], max_tokens=100)), types.CreateMessageResult)
        content = result.content
        text = content.text if isinstance(content, types.TextContent) else str(content)
        return f"LLM response: {text}"

    @server.tool()
    async def test_elicitation(message: str, ctx: Context) -> str:
        """Tests asking the user for input (elicitation)."""
        result = await _elicit(ctx, message, {"type": "object", "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"}},
            "required": ["username", "email"]})
        if seen is not None:
            seen.extend([message, str(result.content)])
        return f"User response: action={result.action}, content={result.content}"

    @server.tool()
    async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
        """Tests elicitation with default values (SEP-1034)."""
        result = await _elicit(ctx, "Test client default value handling - please accept "
                                    "with defaults", SEP1034)
        return f"Elicitation completed: action={result.action}, content={result.content}"

    @server.tool()
    async def test_elicitation_sep1330_enums(ctx: Context) -> str:
        """Tests elicitation with enum schemas (SEP-1330)."""
        result = await _elicit(ctx, "Test enum schemas", SEP1330)
        return f"Elicitation completed: action={result.action}, content={result.content}"

    @server.tool()
    def test_simple_text() -> str:
        """Tests simple text content response."""
        return "This is a simple text response for testing."

    @server.tool()
    def test_image_content() -> Image:
        """Tests image content response."""
        return Image(data=PNG, format="png")

    @server.tool()
    def test_audio_content() -> types.AudioContent:
        """Tests audio content response."""
        return types.AudioContent(type="audio", data=WAV, mime_type="audio/wav")

    @server.tool()
    def test_embedded_resource() -> types.EmbeddedResource:
        """Tests embedded resource content response."""
        return types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain",
            text="This is an embedded resource content."))

    @server.tool()
    def test_multiple_content_types() -> list[types.ContentBlock]:
        """Tests response with multiple content types (text, image, resource)."""
        return [types.TextContent(type="text", text="Multiple content types test:"),
                types.ImageContent(type="image", data=base64.b64encode(PNG).decode(),
                                   mime_type="image/png"),
                types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                    uri="test://mixed-content-resource", mime_type="application/json",
                    text='{"test": "data", "value": 123}'))]

    @server.tool()
    async def test_tool_with_logging(ctx: Context) -> str:
        """Tests tool that emits log messages during execution."""
        for text in ("Tool execution started", "Tool processing data", "Tool execution completed"):
            await _log(ctx, text)
        return "Tool with logging executed successfully"

    @server.tool()
    async def test_tool_with_progress(ctx: Context) -> str:
        """Tests tool that reports progress notifications."""
        for step in (0, 50, 100):
            await ctx.report_progress(step, 100, f"Completed step {step} of 100")
        return "Tool with progress executed successfully"

    @server.tool()
    def test_error_handling() -> str:
        """Tests error response handling."""
        raise ValueError("This tool intentionally returns an error for testing")

    @server.resource("test://static-text", mime_type="text/plain")
    def static_text() -> str:
        """A static text resource for testing."""
        return "This is the content of the static text resource."

    @server.resource("test://static-binary", mime_type="image/png")
    def static_binary() -> bytes:
        """A static binary resource (image) for testing."""
        return PNG

    @server.resource("test://template/{id}/data", mime_type="application/json")
    def template(id: str) -> str:
        """A resource template with parameter substitution."""
        return f'{{"id": "{id}", "templateTest": true, "data": "Data for ID: {id}"}}'

    @server.prompt()
    def test_simple_prompt() -> str:
        """A simple prompt without arguments."""
        return "This is a simple prompt for testing."

    @server.prompt()
    def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
        """A prompt with required arguments."""
        return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"

    @server.prompt()
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[types.ContentBlock]:  # noqa: N803
        """A prompt that includes an embedded resource."""
        return [types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                    uri=resourceUri, mime_type="text/plain",
                    text="Embedded resource content for testing.")),
                types.TextContent(type="text", text="Please process the embedded resource above.")]

    @server.prompt()
    def test_prompt_with_image() -> list[types.ContentBlock]:
        """A prompt that includes image content."""
        return [types.ImageContent(type="image", data=base64.b64encode(PNG).decode(),
                                   mime_type="image/png"),
                types.TextContent(type="text", text="Please analyze the image above.")]

    @server.completion()
    async def complete(ref: types.PromptReference | types.ResourceTemplateReference,
                       argument: types.CompletionArgument,
                       context: types.CompletionContext | None) -> types.Completion:
        """Suggestions for ``test_prompt_with_arguments``'s arguments."""
        found = [v for v in ("paris", "park", "party") if v.startswith(argument.value)]
        return types.Completion(values=found, total=len(found), has_more=False)

    return server
