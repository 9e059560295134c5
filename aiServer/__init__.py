"""The daemon: wiring (service), command handlers and the aiFacade."""
