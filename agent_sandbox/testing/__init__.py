"""Testing support: the conformance suite every provider runs, and :class:`FakeBackend`."""
