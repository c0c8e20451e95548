"""The API gateway in front of Ollama: API keys, Prometheus metrics, streaming passthrough."""
