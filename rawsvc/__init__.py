"""rawsvc: a Twisted service for raw TCP/IP device and print integration."""

__version__ = "0.1.0"
