"""Everything that runs inside one tenant: audit, gateway, redaction, approvals,
recommendations, drive layer, minimization.

Dependency rule (DESIGN.md): this package never imports ``control_plane``. It receives a
``TenantContext`` built at the edge and reaches data only through it. The areas arrive with the
tenancy, audit, gateway and approval issues."""
