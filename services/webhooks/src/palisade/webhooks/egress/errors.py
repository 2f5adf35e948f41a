"""The refusals of a webhook URL at the API, each with a stable code (INVALID_ARGUMENT).

Messages are ours, never the URL or an address it resolved to: the caller learns which rule
refused the URL, not what our resolver saw.
"""

from __future__ import annotations

from palisade.common.errors import InvalidArgument


class InvalidUrl(InvalidArgument):
    code = "invalid_url"
    default_message = (
        "url must be an http(s) URL of at most 2048 characters with a host and no credentials"
    )


class UrlNotAllowed(InvalidArgument):
    code = "url_not_allowed"
    default_message = "url must lead to a public address (https), or to an allowlisted network"
