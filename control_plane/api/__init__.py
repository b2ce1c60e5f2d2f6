"""The JSON API (``/api/...``) and its OpenAPI description (``/openapi.json``).

- ``agents``: the drive layer's API for a tenant's agents;
- ``approvals``: the approval gate's API (``/api/actions``);
- ``members``: a tenant's members and their roles;
- ``openapi``: the OpenAPI 3.1 document of this API and of the gateway (``/v1/...``).

The gateway's own routes are in ``control_plane/gateway``; ``/api/whoami``, ``/api/tenants``
and ``/api/audit/export`` sit beside the dashboard pages they share code with in
``control_plane/tenancy``."""
