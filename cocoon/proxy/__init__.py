"""The proxy role: accepts workers and clients, routes requests, relays answers."""
