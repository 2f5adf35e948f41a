"""Single-use emailed tokens (single_use.py) and the links built on them: magic links."""
