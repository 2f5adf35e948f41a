"""The only way out of the cluster (SECURITY.md 49), one role per module:

- addresses.py: AddressPolicy (which IPs may be dialled) and parse_allowed_networks for
  PALISADE_WEBHOOKS_ALLOWED_NETWORKS (config.py reads the variable and hands the networks on);
- urls.py: parse_webhook_url (`invalid_url`) and check_webhook_url, the creation-time check
  (`url_not_allowed`), both raising the PalisadeErrors of errors.py;
- resolver.py: the Resolver protocol and SystemResolver (getaddrinfo in its own threads);
- client.py: DeliveryClient.post(url, body, headers) -> AttemptResult, which re-checks the
  destination at every attempt and connects only to the addresses it checked.

Wiring, in the service's composition root:

    policy = AddressPolicy(allowed_networks=settings.allowed_networks)
    resolver = SystemResolver()            # close() on shutdown
    client = DeliveryClient(policy=policy, resolver=resolver, timeout_seconds=15)
    url = await check_webhook_url(text, policy=policy, resolver=resolver)   # at creation
    result = await client.post(url.url, body, signing.signed_headers(...))  # per attempt

Nothing here reads the environment or keeps state between attempts.
"""
