"""Ship log records to Grafana Loki: a non-blocking handler (:mod:`~correlation.loki.handler`), a
bounded buffer, a retrying sender, an on-disk spool, and the shipper's own metrics."""
