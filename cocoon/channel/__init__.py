"""The hop channel: TLS 1.3, peer authentication inside it, and multiplexed streams."""
