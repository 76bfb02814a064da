"""The ``cocoon chain``, ``cocoon wallet`` and ``cocoon registry`` commands: the chain side of Cocoon.

Every command but ``chain serve`` takes ``--json`` (one JSON document on stdout) and otherwise
prints a short text. Amounts are given in TON as decimal strings (exact to the nanoTON) and shown
in TON and nanoTON. The chain modules are imported inside the commands: they take half a second
to load, which no other ``cocoon`` command should pay.

``common`` holds what the three share; ``chain``, ``wallet`` and ``registry`` hold one command
group each.
"""

from cocoon.cli_chain.chain import chain_app
from cocoon.cli_chain.registry import registry_app
from cocoon.cli_chain.wallet import wallet_app

__all__ = ["chain_app", "registry_app", "wallet_app"]
