"""Tests of the provisioned stack: Prometheus, Alertmanager, Grafana, compose and the HA files."""
