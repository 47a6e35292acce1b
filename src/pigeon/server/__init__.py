"""Listeners and sessions: sockets in, ``pigeon.smtp`` events out, decisions from policy."""

from .app import Server

__all__ = ["Server"]
