"""`gpt25 serve`: an OpenAI-compatible HTTP API over a continuous-batching engine, and a chat page."""
