"""A short human description of a client from its User-Agent, e.g. "Chrome 120 on Mac OS X"."""

from __future__ import annotations

from ua_parser import parse

_MAX_USER_AGENT = 512


def describe_device(user_agent: str | None) -> str:
    if not user_agent:
        return "Unknown device"
    result = parse(user_agent[:_MAX_USER_AGENT])
    agent = result.user_agent
    name = (
        f"{agent.family} {agent.major}".strip()
        if agent and agent.major
        else (agent.family if agent else "Unknown client")
    )
    if result.os and result.os.family and result.os.family != "Other":
        return f"{name} on {result.os.family}"
    return name
