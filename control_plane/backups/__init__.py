"""Backups under the customer's key, restores that prove themselves, and the restore drill
(ops/BACKUPS.md is the operator's story).

- ``service``: ``backup_tenant`` / ``backup_control`` — ``pg_dump`` (custom format) at an
  exported snapshot, streamed through ``envelope`` (AES-256-GCM in authenticated chunks) under
  a fresh data key wrapped by the tenant's key-encryption key (or the platform backup key),
  hashed as written, with a ``manifest`` signed by the chain's checkpoint key, published to a
  ``destinations`` folder or S3 bucket (object first, manifest last);
- ``restore``: ``restore_tenant`` into a new database with every check, ``drill_tenant``;
- ``replace``: ``replace_tenant``, a verified restore swapped in over the live tenant database,
  only on a decided ``tenant.restore`` approval (single use), the replaced database retained;
- ``control_restore``: ``restore_control``, the control-plane backup into a new database;
- ``age``: age recipients (pyrage) for the control-plane backup's data key;
- ``retention``: which backups to keep (30 daily, 12 monthly) and pruning;
- ``dump`` and ``pgtools``: the ``pg_dump`` / ``pg_restore`` subprocesses;
- ``exceptions`` and ``events``: the package's refusals and audit event types.

A tenant backup's wrapped data key lives only in the control plane's ``backups`` table: a
tenant's deletion deletes those rows (crypto-shred) and the objects at their destinations, and
revoking the tenant's KEK makes every
one of its backups unreadable, as it does its live data."""
