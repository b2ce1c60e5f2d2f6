"""Platform audit event types of the backups area. (A tenant's deletion destroys its backups' keys
and counts them in ``tenant.deleted``'s ``backups_destroyed``.)"""

from tenant_runtime import audit_lineage


class BackupEvents:
    CREATED = "backup.created"
    RESTORED = "backup.restored"
    DRILL_PASSED = "backup.drill_passed"
    DRILL_FAILED = "backup.drill_failed"
    PRUNED = "backup.pruned"
    REPLACED = "backup.replaced"  # a backup restored over the live tenant database (platform)
    RESTORED_OVER = "backup.restored_over"  # the same, in the restored tenant chain
    CONTROL_RESTORED = "backup.control_restored"
    RESTORED_AS = "backup.restored_as"  # a backup restored as a new tenant (platform chain)
    RESTORED_FROM = audit_lineage.RESTORED_FROM  # the same, first event of the copy's chain
