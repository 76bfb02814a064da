"""The worker role: dials proxies, runs requests on an engine, meters tokens."""
