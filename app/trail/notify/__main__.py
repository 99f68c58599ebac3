"""``python -m trail.notify``: runs the alert notifier (:func:`trail.notify.notifier.main`)."""

import sys

from trail.notify.notifier import main

sys.exit(main())
