"""Pigeon: a mail transfer agent and SMTP toolkit."""

__version__ = "0.1.0"
