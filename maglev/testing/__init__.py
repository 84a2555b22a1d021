"""Public test doubles and test infrastructure (trio's ``trio.testing`` habit)."""
