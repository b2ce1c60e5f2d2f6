"""RQ queues, jobs and the worker process. Jobs take JSON-safe arguments only."""
