"""The HTTP API for applications in any language (``recorder serve``): :mod:`.app`."""
