"""The gateway's HTTP edge: the drop-in OpenAI and Anthropic endpoints under ``/v1/`` and the
per-tenant rate limits. The call path itself is tenant_runtime.gateway."""
