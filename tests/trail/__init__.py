"""Tests of app/trail: the core here, the three tools in cli/, web/ and notify/."""
