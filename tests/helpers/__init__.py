"""Test helpers shared by the suite: run the relay as a subprocess, and loopback peers.

Import as ``from helpers.relay import RelayProcess`` (``tests/`` is on ``sys.path``
through ``tests/conftest.py``).
"""
