"""The test suite. A package, so that its fakes import as ``tests.fakes`` from the repository
root: in pytest (which puts the root on ``sys.path`` for a package) and in ``python -m bench``."""
