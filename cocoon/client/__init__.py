"""The client role: the OpenAI HTTP API on loopback, forwarding to a proxy."""
