"""Who is calling a chats RPC, read by the visitors service's own rules
(palisade.visitors.access: workspace, mode, scope, key type), and who a message is from: the
visitor when a publishable key posts it (the key lives in the visitor's browser), else an agent
(a person, or a secret key on the workspace's backend)."""

from __future__ import annotations

from palisade.common.caller import Caller
from palisade.visitors.access import scope_of
from palisade.visitors.chats.model import AGENT, VISITOR
from palisade.visitors.model import Scope

READ = "chats:read"
WRITE = "chats:write"


def chat_scope(caller: Caller, *, needs: str) -> Scope:
    """The caller's scope for a chats method needing scope `needs`; publishable keys may call
    every chats method the gateway lets them reach (CreateChat, PostMessage)."""
    return scope_of(caller, needs=needs, publishable_ok=True)


def sender_of(scope: Scope) -> str:
    return VISITOR if scope.publishable else AGENT


def mode_of(scope: Scope) -> str:
    return "test" if scope.test else "live"
