"""Who is calling a chats RPC, from the verified caller assertion: the workspace and mode whose
chats it may see, and whether it speaks for the visitor (a publishable key, which lives in the
visitor's browser) or for the workspace (a person, or a secret key on its backend)."""

from __future__ import annotations

from dataclasses import dataclass

from palisade.common.caller import Caller
from palisade.visitors.chats.errors import CallerNotAllowed, MissingScope
from palisade.visitors.chats.model import AGENT, VISITOR, Tenancy

USER_PREFIX = "user:"
API_KEY_PREFIX = "apikey:"
_MODES = {"live": False, "test": True}


@dataclass(frozen=True)
class ChatCaller:
    principal: str  # "user:<id>" | "apikey:<id>": the actor of the events it causes
    tenancy: Tenancy
    publishable: bool

    @property
    def sender(self) -> str:
        return VISITOR if self.publishable else AGENT


def chat_caller(caller: Caller, *, needs: str) -> ChatCaller:
    """The caller as chats see it, for a method needing scope `needs` (API keys must hold it;
    people hold every scope of their workspace). CallerNotAllowed for services, anonymous
    clients, callers without a workspace and keys without a known mode; MissingScope for a
    key without the scope (the gateway refuses both first: this is the service's own check)."""
    workspace_id = caller.workspace_id
    if not workspace_id:
        raise CallerNotAllowed()
    if caller.principal.startswith(USER_PREFIX):
        # People work in live data: test data belongs to test-mode keys alone.
        return ChatCaller(caller.principal, Tenancy(workspace_id, test=False), publishable=False)
    if caller.principal.startswith(API_KEY_PREFIX):
        test = _MODES.get(caller.key_mode or "")
        if test is None:
            raise CallerNotAllowed()
        if needs not in caller.scopes:
            raise MissingScope()
        publishable = caller.key_type == "publishable"
        return ChatCaller(caller.principal, Tenancy(workspace_id, test=test), publishable)
    raise CallerNotAllowed()
