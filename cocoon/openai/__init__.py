"""The OpenAI API surface: request schemas (shared by client and worker), error bodies, SSE."""
