"""palisade.apikeys: the API key service."""
