"""Tests of the demo chain (app/demo): its parts, the chain under gunicorn, its Celery worker."""
