"""Shared AI code: models, the model registry and loader, and dynamic batching."""
