"""Ship log records to Grafana Loki: a non-blocking handler, a bounded buffer, a retrying sender."""

from correlation.loki.handler import LokiHandler
from correlation.loki.stats import DROP_REASONS, RETRY_REASONS, ShipperStats

__all__ = ["DROP_REASONS", "RETRY_REASONS", "LokiHandler", "ShipperStats"]
