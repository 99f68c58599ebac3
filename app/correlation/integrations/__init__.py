"""The library inside other frameworks and libraries: one module each.

- :mod:`~correlation.integrations.flask`: the edge (:class:`Correlation`), and
  :mod:`~correlation.integrations.errors`, its error bodies;
- :mod:`~correlation.integrations.asgi` (``pip install 'correlation-trail[asgi]'``): the same edge
  for FastAPI, Starlette and any ASGI 3 app (:class:`CorrelationMiddleware`);
- :mod:`~correlation.integrations.django` (``pip install 'correlation-trail[django]'``): the Django edge,
  a middleware over the same core;
- :mod:`~correlation.integrations.requests` and :mod:`~correlation.integrations.httpx`
  (``pip install 'correlation-trail[httpx]'``): outgoing calls carry the hop;
- :mod:`~correlation.integrations.celery` (``pip install 'correlation-trail[celery]'``): tasks as hops;
- :mod:`~correlation.integrations.gunicorn`: the server's hooks and log configuration;
- :mod:`~correlation.integrations.structlog` (``pip install 'correlation-trail[structlog]'``) and
  :mod:`~correlation.integrations.loguru` (``pip install 'correlation-trail[loguru]'``): their lines
  through the library's handlers.

Import the one you use; importing ``correlation`` or this package imports none of the optional ones.
"""
