"""Shared utilities: configuration, logging and error types."""
