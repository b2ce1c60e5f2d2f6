"""Customer-held keys: each tenant's data key (DEK) exists only wrapped by the tenant's
key-encryption key (KEK) in its KMS. See ``providers.py`` for the adapter contract."""
