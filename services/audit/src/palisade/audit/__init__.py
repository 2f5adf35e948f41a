"""palisade.audit: the security log service."""
