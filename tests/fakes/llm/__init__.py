"""A local LLM provider that speaks the wire protocols of the providers the gateway routes to, so
the official SDKs (openai, anthropic, boto3) run their real code paths against it, agent
traffic included (tools, structured output, images, thinking, embeddings).

    OpenAI            POST /v1/chat/completions, POST /v1/responses, POST /v1/embeddings,
                      GET /v1/models. Auth ``Authorization: Bearer <api_key>``.
    Azure OpenAI      POST /openai/deployments/{deployment}/chat/completions and
                      .../embeddings?api-version=... (no ``api-version`` → 400), and the v1 API
                      /openai/v1/chat/completions, /openai/v1/responses, /openai/v1/embeddings
                      (no api-version; the model in the body). Auth ``api-key: <api_key>`` or
                      ``Authorization: Bearer <azure_token>`` (an Entra ID token); the v1 API
                      also takes ``Bearer <api_key>``.
    Anthropic         POST /v1/messages, POST /v1/messages/count_tokens (→ {"input_tokens"}).
                      Auth ``x-api-key`` or ``Authorization: Bearer``; the
                      ``anthropic-version`` header is required.
    Bedrock runtime   POST /model/{modelId}/converse and /model/{modelId}/converse-stream
                      (``application/vnd.amazon.eventstream``: binary frames with prelude and
                      message CRC32s). Auth: a SigV4 ``Authorization`` header whose credential
                      scope names ``aws_access_key_id`` (the signature itself is not checked).

Streams: OpenAI chat as SSE ``data:`` chunks ending in ``data: [DONE]`` (role chunk, content
pieces, tool_calls deltas — the first for a call carries index, id, type, function.name and
arguments "", the next ones index and argument pieces —, a finish chunk per choice, a usage
chunk when ``stream_options.include_usage``); Responses as ``event:``/``data:`` SSE with
sequence numbers (response.created, response.in_progress, then per output item
output_item.added, content_part.added, output_text.delta…, output_text.done,
content_part.done — or function_call_arguments.delta…, .done —, output_item.done, and
response.completed, or response.incomplete when max_output_tokens cut it); Anthropic's events
(message_start, content_block_start — tool_use with input {} —, ping, content_block_delta with
thinking_delta + signature_delta / text_delta / input_json_delta, content_block_stop,
message_delta, message_stop); Bedrock's messageStart, contentBlockStart (toolUse only),
contentBlockDelta (text or toolUse.input), contentBlockStop, messageStop, metadata.

Every protocol answers in its own error shape: OpenAI ``{"error": {"message", "type", "param",
"code"}}``, Azure ``{"error": {"code", "message"}}``, Anthropic ``{"type": "error", "error":
{"type", "message"}}``, Bedrock an ``x-amzn-ErrorType`` header and ``{"message"}``. It refuses
what the real providers refuse, in their words (400):
- OpenAI chat: a tool message not answering the previous assistant's tool_calls; an assistant's
  tool_calls not all answered before the next message; tool_choice without tools, or naming a
  function not offered; ``n`` outside 1..128.
- Responses: an unknown (or ``store: false``) ``previous_response_id`` (code
  previous_response_not_found); a function_call_output without its function_call; a
  function_call without its output.
- Embeddings: empty input; ``dimensions`` on text-embedding-ada-002 or above the model's size.
- Anthropic: tool_use ids without tool_result blocks in the next message; a tool_result whose
  tool_use_id is not in the previous message; a thinking block whose signature is not the one
  this fake issued (a redacted_thinking block whose data is not); with thinking on, a final
  tool-result turn whose assistant message does not start with a thinking block; budget_tokens
  below 1024 or not below max_tokens; thinking with a forced tool_choice (any/tool).
- Bedrock: toolUse/toolResult blocks without toolConfig; toolUse ids without toolResult blocks
  in the next message; a conversation not starting with a user message.

The model's behaviour is deterministic, in this order:
1. a reply queued by ``script(...)`` is the answer (text, tool calls, or both);
2. tools offered and tool choice not none: with choice auto, when the last turn is the user's
   (not tool results), and always with a forced choice (required/any, or a named tool), the
   model calls a tool — the named one, else the first offered — with arguments
   ``{<first string property of its schema, or "input">: <text of the last user message>}``,
   the schema's other required properties set to minimal values ("", 0, false, [], null, the
   first enum value). ``n_tool_calls`` (default 1) calls are made, cycling through the offered
   tools, unless parallel calls are off (``parallel_tool_calls: false``,
   ``disable_parallel_tool_use``), then one;
3. the last turn carries tool results (a message carrying tool results counts as a results
   turn even with text beside them): ``"Tool said: " + <the results' texts joined by "\\n">``;
4. a JSON format asked for (chat ``response_format`` json_schema / json_object, Responses
   ``text.format``, Anthropic ``output_config.format``): a JSON object whose first string
   property (or "answer") holds the answer of rule 5, the other properties minimal values;
5. otherwise ``"You said: " + <text of the last user message>`` (so a caller's placeholders
   come back and can be restored), or ``reply`` when a test sets it.
With Anthropic thinking on (``{"type": "enabled", budget_tokens}`` or ``adaptive``) the answer
starts with a thinking block ``"Let me think about: " + <last user text>`` signed by ``sign()``
(or, with ``redact_thinking``, a redacted_thinking block). Tool call ids are deterministic per
server: ``call_…`` (OpenAI), ``toolu_01…`` (Anthropic), ``tooluse_…`` (Bedrock). Chat with
``n`` answers n identical choices; ``logprobs`` gives the text in 4-character tokens with
``top_logprobs`` alternatives. A stop sequence found in the text cuts it there (finish reason
stop / stop_sequence). Responses store every turn unless ``store: false``, for
``previous_response_id``.

Usage: input tokens = (characters of all messages' text, system prompts, tool results, tool
calls' names and arguments, and each offered tool's name + description + schema as compact
sorted JSON) // 4 + 1, plus ``IMAGE_TOKENS`` (85) per image or other non-text part (files,
audio, PDF documents; text documents count their text); output tokens = (characters of the
text, the tool calls' names and arguments, and the thinking) // 4 + 1. A text longer than
``max_tokens`` allows is cut to ``max_tokens * 4 - 1`` characters, so it costs exactly
``max_tokens``, and finishes with length / max_tokens / incomplete. Embeddings: each string input
``len // 4 + 1`` tokens, a token array its length.

Streams send text, thinking and tool arguments in pieces of ``chunk_size`` characters (default
3, so placeholders get split across chunks), each piece its own HTTP chunk.

``received`` holds every request exactly as it arrived (method, path with query, headers, raw
body bytes), so tests can assert on the bytes on the wire; ``clear()`` empties it (and the
queued faults and scripted replies).

Faults: ``fail_next(*modes)`` queues failures, consumed one per request (whatever the path):
- an int status (429, 500, 502, 503, 529, 400, ...) answered in that protocol's error shape;
- ``(429, seconds)`` (or ``("429", seconds)``): 429 with a ``Retry-After: <seconds>`` header;
- ``"timeout"``: hold the connection ``hang_seconds`` (default 5) without answering, then close;
- ``"reset"``: close the connection without answering;
- ``"cut"``: a stream sends its first content piece and then the connection is closed without
  the end of the body (a JSON answer sends half its body); for mid-stream failures.
``latency_seconds`` is added before every answer (for benchmarks).
"""

from tests.fakes.llm.anthropic_messages import sign
from tests.fakes.llm.model import IMAGE_TOKENS, Reply, ToolCall, tokens_for
from tests.fakes.llm.openai_embeddings import vector
from tests.fakes.llm.server import OPENAI_MODELS, Fault, LLMServer
from tests.fakes.llm.wire import ReceivedRequest, event_stream_message

__all__ = ["IMAGE_TOKENS", "OPENAI_MODELS", "Fault", "LLMServer", "ReceivedRequest", "Reply",
           "ToolCall", "event_stream_message", "sign", "tokens_for", "vector"]
