"""What Magistrate tells its operators about itself: Prometheus metrics (``metrics``) and
OpenTelemetry traces of the gateway path (``tracing``). Neither ever carries content: label
values and span attributes come from closed sets (route templates, provider names, reasons,
entity types) or from operator-chosen identifiers (tenant slugs), never from what a caller
sent. docs/observability.md lists each metric and attribute."""
