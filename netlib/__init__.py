"""Transports: TCP framing, UDP broadcast. Nothing here imports the application."""
