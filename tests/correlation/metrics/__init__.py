"""Tests of correlation.metrics: the histogram and the files shared by workers."""
