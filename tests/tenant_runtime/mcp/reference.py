"""The reference upstream the conformance suite's server scenarios run through Magistrate
against: a real MCP server built with the official SDK's ``MCPServer``, offering the tools,
resources and prompts the scenarios name (``test_simple_text``, ``test://static-text``,
``test_simple_prompt`` …), as the suite's "everything" server describes them."""

from __future__ import annotations

import base64

import mcp_types as types
from mcp.server.mcpserver import Context, Image, MCPServer

# a 1×1 PNG and a tiny WAV, the payloads of the image and audio scenarios
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQ"
                       "GAhKmMIQAAAABJRU5ErkJggg==")
WAV = ("UklGRiQAAABXQVZFZm10IBAAAAABAAEAESsAACJWAAACABAAZGF0YQAAAAA=")


def make_reference() -> MCPServer:
    server = MCPServer("reference")

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
            await ctx.info(text)
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
