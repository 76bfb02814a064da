"""Chain access: the Ledger interface, its sandbox and TON backends, wallets and contract messages."""
