"""Cocoon in Python: a confidential, decentralized AI inference network."""

__version__ = "0.2.0"
