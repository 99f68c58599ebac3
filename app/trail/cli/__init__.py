"""The ``trail`` command: one request's trail in a terminal (:mod:`trail.cli.main`)."""
