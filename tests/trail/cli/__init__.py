"""Tests of the ``trail`` command (trail.cli)."""
