"""Values every auth servicer converts the same way between proto and domain.

The servicers (AuthService, TeamService, ...) are thin adapters; what they build alike lives
here once, so a session handed out by a login, a workspace switch or an invitation accept
always reaches the client in the same shape.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from palisade.auth.bounded import client_ip
from palisade.auth.mfa.login import LoginResult, MfaPending
from palisade.auth.sessions.devices import describe_device
from palisade.auth.sessions.manager import ClientInfo
from palisade.common.caller import Caller
from palisade_api.auth.v1 import auth_pb2


def client_info(caller: Caller) -> ClientInfo:
    """The caller's network and device as auth stores them (sessions, links, events):
    canonical and bounded to their columns."""
    return ClientInfo(ip=client_ip(caller.client_ip), device=describe_device(caller.user_agent))


def timestamp(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def token_response(issued: LoginResult) -> auth_pb2.TokenResponse:
    """The session's tokens, or the second-factor challenge a login stopped at."""
    if isinstance(issued, MfaPending):
        return auth_pb2.TokenResponse(
            mfa_required=True, mfa_token=issued.mfa_token, methods=list(issued.methods)
        )
    return auth_pb2.TokenResponse(
        access_token=issued.access_token,
        refresh_token=issued.refresh_token,
        expires_in=issued.expires_in,
        token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
    )
