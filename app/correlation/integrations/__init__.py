"""Integrations with other libraries, each an optional extra that this package does not import.

- :mod:`correlation.integrations.structlog` (``pip install 'correlation-trail[structlog]'``)
- :mod:`correlation.integrations.loguru` (``pip install 'correlation-trail[loguru]'``)

Import the one you use; importing ``correlation`` or this package imports neither library.
"""
