"""The fake LLM provider; it lives in the package ``tests.fakes.llm`` (read its docstring for the
protocols and the model's rules). This module keeps ``from tests.fakes.llm_servers import
LLMServer`` working."""

from tests.fakes.llm import (
    IMAGE_TOKENS,
    OPENAI_MODELS,
    Fault,
    LLMServer,
    ReceivedRequest,
    Reply,
    ToolCall,
    event_stream_message,
    sign,
    tokens_for,
    vector,
)

__all__ = ["IMAGE_TOKENS", "OPENAI_MODELS", "Fault", "LLMServer", "ReceivedRequest", "Reply",
           "ToolCall", "event_stream_message", "sign", "tokens_for", "vector"]
