"""Twisted protocol factories: frames → Envelope packets → a packet handler."""
