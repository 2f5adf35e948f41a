"""The only way out of the cluster: the address policy, URL checks, the resolver and the
delivery HTTP client (SECURITY.md 49). Each module has one role; nothing here reads the
environment (config.py does, and hands the parsed allowlist to AddressPolicy).
"""
