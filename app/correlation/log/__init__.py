"""Log lines: what a line holds and in which order, how a record becomes one, and the handlers
that take lines (stdout here, Loki in :mod:`correlation.loki`).

- :mod:`~correlation.log.formatter`: :class:`JsonFormatter` and :class:`CorrelationFilter`;
- :mod:`~correlation.log.access`: the access line, one per request and hop;
- :mod:`~correlation.log.stdout`: :class:`StdoutHandler`;
- :mod:`~correlation.log.jsonline`: a line's JSON; :mod:`~correlation.log.records`: the access record.
"""
