"""Tests of correlation.loki, the shipper: buffer, push format, sender, spool, handler, faults."""
