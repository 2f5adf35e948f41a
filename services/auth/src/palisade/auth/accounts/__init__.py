"""Accounts: sign-up, password login and change, the profile, callers (principals), reindex."""
