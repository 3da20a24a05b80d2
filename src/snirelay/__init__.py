"""snirelay: a realm-compatible TCP/UDP relay that understands TLS server names."""

__version__ = "0.1.0"
