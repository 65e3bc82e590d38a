"""A plugin module that fails to import."""

raise ImportError("missing dependency 'acme-sdk'")
