"""Webhook URL checks at creation: the syntax (`invalid_url`) and the destination
(`url_not_allowed`), with the host resolved through the injected FakeResolver (no DNS)."""

from __future__ import annotations

import asyncio

import pytest

from palisade.webhooks.egress.addresses import AddressPolicy, parse_allowed_networks
from palisade.webhooks.egress.errors import InvalidUrl, UrlNotAllowed
from palisade.webhooks.egress.urls import (
    MAX_URL_CHARS,
    check_webhook_url,
    parse_webhook_url,
)

LOCAL = AddressPolicy(allowed_networks=parse_allowed_networks('["127.0.0.0/8"]'))


@pytest.mark.parametrize(
    ("given", "canonical", "host", "port"),
    [
        ("https://example.com", "https://example.com/", "example.com", 443),
        ("https://example.com/hooks?x=1&y=%2F", "https://example.com/hooks?x=1&y=%2F", None, 443),
        ("HTTPS://Example.COM:443/A", "https://example.com/A", "example.com", 443),
        ("https://example.com:8443/", "https://example.com:8443/", None, 8443),
        ("http://example.com:80/x", "http://example.com/x", None, 80),
        ("https://example.com?q", "https://example.com/?q", None, 443),
        ("https://bücher.example/", "https://xn--bcher-kva.example/", "xn--bcher-kva.example", 443),
        # UTS 46 maps fullwidth letters and the ideographic full stop.
        (
            "https://\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25\u3002com/",
            "https://example.com/",
            None,
            443,
        ),
        ("https://93.184.215.14/h", "https://93.184.215.14/h", "93.184.215.14", 443),
        (
            "https://[2606:4700:4700:0::1111]:8443/",
            "https://[2606:4700:4700::1111]:8443/",
            "2606:4700:4700::1111",
            8443,
        ),
        ("https://example.com./", "https://example.com./", "example.com.", 443),
    ],
)
def test_valid_urls_in_canonical_form(
    given: str, canonical: str, host: str | None, port: int
) -> None:
    url = parse_webhook_url(given)
    assert url.url == canonical
    assert url.port == port
    if host is not None:
        assert url.host == host


@pytest.mark.parametrize(
    "given",
    [
        "",
        "example.com/hook",
        "ftp://example.com/",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "https:/example.com/",
        "https://",
        "https:///path",
        "https://user@example.com/",
        "https://user:pass@example.com/",
        "https://example.com@127.0.0.1/",
        "https://:pass@example.com/",
        "https://example.com:0/",
        "https://example.com:65536/",
        "https://example.com:99999/",
        "https://example.com:/",
        "https://example.com:8a/",
        "https://example.com:80:90/",
        "https://example.com/#frag",
        "https://exa mple.com/",
        "https://example.com/a b",
        "https://example.com/\t",
        "\nhttps://example.com/",
        "https://example.com/\x00",
        "https://ex\u200bample.com/",  # zero-width space: invisible, refused rather than mapped
        "https://example.com\\@127.0.0.1/",
        "https://example.com/é",
        "https://example.com/%zz",
        "https://example.com/%4",
        "https://a..b/",
        "https://-a.com/",
        "https://a_b.example/",
        "https://" + "a" * 64 + ".com/",
        "https://" + ".".join(["a" * 60] * 5) + "/",
        "https://127.1/",
        "https://2130706433/",
        "https://0x7f.0.0.1/",
        "https://0177.0.0.1/",
        "https://127.0.0.01/",
        "https://1.2.3.4.5/",
        "https://256.1.1.1/",
        "https://[::1/",
        "https://[fe80::1%25eth0]/",
        "https://[not-v6]/",
        "https://[::1]x/",
        "https://%31%32%37.0.0.1/",
        "https://example.com/" + "a" * MAX_URL_CHARS,
    ],
)
def test_invalid_urls_are_refused(given: str) -> None:
    with pytest.raises(InvalidUrl) as caught:
        parse_webhook_url(given)
    assert caught.value.code == "invalid_url"


def test_length_bound_is_exact() -> None:
    prefix = "https://example.com/"
    parse_webhook_url(prefix + "a" * (MAX_URL_CHARS - len(prefix)))
    with pytest.raises(InvalidUrl):
        parse_webhook_url(prefix + "a" * (MAX_URL_CHARS - len(prefix) + 1))


async def test_public_https_host_is_accepted(resolver) -> None:
    resolver.add("hooks.example.com", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
    url = await check_webhook_url(
        "https://hooks.example.com/in", policy=AddressPolicy(), resolver=resolver
    )
    assert url.url == "https://hooks.example.com/in"
    assert resolver.calls["hooks.example.com"] == 1


async def test_hostname_resolving_to_loopback_is_refused_without_the_allowlist(resolver) -> None:
    resolver.add("sneaky.example.com", ["127.0.0.1"])
    with pytest.raises(UrlNotAllowed) as caught:
        await check_webhook_url(
            "https://sneaky.example.com/", policy=AddressPolicy(), resolver=resolver
        )
    assert caught.value.code == "url_not_allowed"
    # The message names the rule, never the address the resolver saw.
    assert "127.0.0.1" not in caught.value.message
    # With the allowlist it is accepted, over https and plain http alike.
    assert await check_webhook_url("https://sneaky.example.com/", policy=LOCAL, resolver=resolver)
    assert await check_webhook_url("http://sneaky.example.com/", policy=LOCAL, resolver=resolver)


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.0.10",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "::1",
        "fd00::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
        "2001::1",
    ],
)
async def test_hostnames_resolving_inside_are_refused(resolver, address: str) -> None:
    resolver.add("inside.example.com", [address])
    with pytest.raises(UrlNotAllowed):
        await check_webhook_url(
            "https://inside.example.com/", policy=AddressPolicy(), resolver=resolver
        )


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.1/",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:a9fe:a9fe]/",
        "https://[fd00::1]/",
        "https://[fe80::1]/",
        "https://0.0.0.0/",
    ],
)
async def test_ip_literals_inside_are_refused_without_a_lookup(resolver, url: str) -> None:
    with pytest.raises(UrlNotAllowed):
        await check_webhook_url(url, policy=AddressPolicy(), resolver=resolver)
    assert not resolver.calls


async def test_one_inside_address_among_public_ones_refuses_the_host(resolver) -> None:
    resolver.add("split.example.com", ["93.184.215.14", "10.0.0.7"])
    with pytest.raises(UrlNotAllowed):
        await check_webhook_url(
            "https://split.example.com/", policy=AddressPolicy(), resolver=resolver
        )


async def test_plain_http_needs_every_address_allowlisted(resolver) -> None:
    resolver.add("public.example.com", ["93.184.215.14"])
    resolver.add("mixed.example.com", ["127.0.0.1", "93.184.215.14"])
    with pytest.raises(UrlNotAllowed, match="https"):
        await check_webhook_url(
            "http://public.example.com/", policy=AddressPolicy(), resolver=resolver
        )
    with pytest.raises(UrlNotAllowed, match="https"):
        await check_webhook_url("http://public.example.com/", policy=LOCAL, resolver=resolver)
    with pytest.raises(UrlNotAllowed, match="https"):
        await check_webhook_url("http://mixed.example.com/", policy=LOCAL, resolver=resolver)
    # https to the same mixed host is fine: every address is allowed (one by the allowlist).
    await check_webhook_url("https://mixed.example.com/", policy=LOCAL, resolver=resolver)
    # A plain-http literal inside the allowlist needs no lookup at all.
    await check_webhook_url("http://127.0.0.1:8080/hook", policy=LOCAL, resolver=resolver)


async def test_unresolvable_host_is_refused(resolver) -> None:
    with pytest.raises(UrlNotAllowed, match="resolve"):
        await check_webhook_url(
            "https://nowhere.example.com/", policy=AddressPolicy(), resolver=resolver
        )


async def test_resolver_that_hangs_is_bounded() -> None:
    never = asyncio.Event()

    class Hanging:
        async def resolve(self, host: str, port: int) -> list:
            await never.wait()
            raise AssertionError("unreachable")

    with pytest.raises(UrlNotAllowed, match="resolve"):
        await check_webhook_url(
            "https://slow.example.com/",
            policy=AddressPolicy(),
            resolver=Hanging(),
            resolve_seconds=0.05,
        )


async def test_syntax_errors_come_before_any_lookup(resolver) -> None:
    with pytest.raises(InvalidUrl):
        await check_webhook_url(
            "https://user@hooks.example.com/", policy=AddressPolicy(), resolver=resolver
        )
    assert not resolver.calls
