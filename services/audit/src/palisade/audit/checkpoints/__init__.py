"""Signed checkpoints: the Ed25519 signing keys, the note format, signing and storing them."""
