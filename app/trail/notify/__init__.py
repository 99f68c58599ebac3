"""The alert notifier, ``python -m trail.notify``: Alertmanager's webhook in, one notification per
alert out, naming the hop where the failed request broke (:mod:`trail.notify.notifier`)."""
