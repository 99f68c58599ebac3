"""The test suite, in folders that mirror the source (``correlation/``, ``trail/``, ``demo/``) plus
``stack/`` and ``bench/``. A package, so that pytest puts the repository root on ``sys.path``: the
helpers import as ``tests.support`` and the fakes shared with bench as ``fakes``."""
