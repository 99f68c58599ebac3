"""Tests of the trail page (trail.web)."""
