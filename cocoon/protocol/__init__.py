"""Wire protocol between nodes: messages, framing and the connection state machine.

Pure code: no sockets, no asyncio, no clock, no randomness (time and nonces come in as
arguments), so every rule here is testable in memory.
"""
