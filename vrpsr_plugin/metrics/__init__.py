"""See vrpsr_plugin/__init__.py: modules here are imported by file suffix."""
