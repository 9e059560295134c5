"""Maintenance scripts, run as files (python scripts/NAME.py); a package for the tests."""
