"""Host-framework adapters (torchao, NNCF), importable as ``qsam2_ext.integrations``."""
