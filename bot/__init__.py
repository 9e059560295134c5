"""The bot: clients and load tools that speak the daemon's wire protocol."""
