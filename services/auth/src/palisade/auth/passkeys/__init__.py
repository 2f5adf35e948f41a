"""Passkeys (WebAuthn): registration, login, management, their store and errors."""
