"""The governed LLM gateway: every LLM call of a tenant goes through here (allowlist, redaction,
spend reservation, rate limit, provider routing with retries, restore, audit)."""
