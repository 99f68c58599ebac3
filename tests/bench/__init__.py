"""Tests of bench/'s own parts (no timing: figures belong to `make bench`)."""
