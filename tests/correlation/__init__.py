"""Tests of the library, app/correlation: one folder per subpackage, the core modules here."""
