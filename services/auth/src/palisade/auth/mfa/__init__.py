"""Second factors: TOTP, backup codes, their store, and the MFA step of a login."""
