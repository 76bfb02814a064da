"""Cocoon in Python: a confidential, decentralized AI inference network."""

__version__ = "0.1.0"
