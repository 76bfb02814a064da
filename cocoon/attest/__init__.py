"""Attestation: evidence from TEEs (TDX, SEV-SNP, simulated), its verification and policy.

Parsing and verification are pure (bytes and an explicit ``now`` in, verdicts out); only the
providers in ``configfs`` and the dev-root store in ``sim`` touch the file system.
"""
