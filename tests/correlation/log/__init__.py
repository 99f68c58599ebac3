"""Tests of correlation.log: the formatter, the access line, stdout."""
