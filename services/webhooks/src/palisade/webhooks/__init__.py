"""palisade.webhooks: webhook endpoints, Standard Webhooks signed deliveries, SSRF-safe egress."""
