"""Hash chains: the canonical encoding of an event and the verification of a chain."""
