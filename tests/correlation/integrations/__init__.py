"""Tests of correlation.integrations: Flask, requests, httpx, Celery, gunicorn, loguru, structlog."""
