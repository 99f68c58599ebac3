"""Tests of the alert notifier (trail.notify)."""
