"""Passwords: hashing (Argon2id, bcrypt upgrade) and the policy for new passwords."""
