"""The bot: clients and load tools that speak the daemon's wire protocol."""

__version__ = "0.2.0"  # the report schema version is bot/meta.py SCHEMA_VERSION
