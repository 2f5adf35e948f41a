"""The unverified-account restrictions setting, and the routes that name its actions."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from pydantic import ValidationError

import palisade_api
from palisade.auth.accounts.restrictions import (
    ACTIONS,
    DEFAULT,
    EmailNotVerified,
    UnverifiedRestrictions,
    require_verified,
)
from palisade.auth.config import AuthSettings
from palisade_api.common.v1 import access_pb2


def test_second_factors_are_always_restricted() -> None:
    assert DEFAULT.actions == ("create_api_keys", "enrol_second_factor", "invite_members")
    assert UnverifiedRestrictions.from_setting([]).actions == ("enrol_second_factor",)
    assert UnverifiedRestrictions.from_setting(
        ["invite_members", "invite_members", "enrol_second_factor"]
    ).actions == ("enrol_second_factor", "invite_members")


def test_a_verified_account_has_no_restrictions() -> None:
    assert DEFAULT.of(email_verified=True) == ()
    assert DEFAULT.of(email_verified=False) == DEFAULT.actions
    require_verified(email_verified=True)
    with pytest.raises(EmailNotVerified) as caught:
        require_verified(email_verified=False)
    assert caught.value.code == "email_not_verified"


def test_the_setting_is_a_json_list_of_known_actions(monkeypatch) -> None:
    monkeypatch.delenv("PALISADE_AUTH_UNVERIFIED_RESTRICTIONS", raising=False)
    assert AuthSettings().unverified_restrictions == ("create_api_keys", "invite_members")
    monkeypatch.setenv("PALISADE_AUTH_UNVERIFIED_RESTRICTIONS", "[]")
    assert AuthSettings().unverified_restrictions == ()
    monkeypatch.setenv("PALISADE_AUTH_UNVERIFIED_RESTRICTIONS", '["invite_members"]')
    assert AuthSettings().unverified_restrictions == ("invite_members",)
    for bad in ('["create_api_key"]', '"create_api_keys"', "[1]"):
        monkeypatch.setenv("PALISADE_AUTH_UNVERIFIED_RESTRICTIONS", bad)
        with pytest.raises(ValidationError):
            AuthSettings()


def _restricted_routes() -> dict[str, str]:
    """Every public RPC of every generated proto that names a restricted action."""
    found: dict[str, str] = {}
    for module_info in pkgutil.walk_packages(palisade_api.__path__, "palisade_api."):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(module_info.name)
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                rule = method.GetOptions().Extensions[access_pb2.access]
                if rule.restricted_action:
                    found[method.full_name] = rule.restricted_action
    return found


def test_every_action_a_route_names_is_one_the_setting_knows() -> None:
    routes = _restricted_routes()
    assert set(routes.values()) <= ACTIONS, routes
    enrolment = {name for name, action in routes.items() if action == "enrol_second_factor"}
    assert enrolment == {
        "palisade.auth.v1.AuthService.StartTotpEnrollment",
        "palisade.auth.v1.AuthService.ConfirmTotp",
        "palisade.auth.v1.AuthService.PasskeyRegistrationOptions",
        "palisade.auth.v1.AuthService.RegisterPasskey",
    }
    keys = {name for name, action in routes.items() if action == "create_api_keys"}
    assert keys == {
        "palisade.apikeys.v1.ApiKeysService.CreateApiKey",
        "palisade.apikeys.v1.ApiKeysService.RotateApiKey",
    }
    invitations = {name for name, action in routes.items() if action == "invite_members"}
    assert invitations == {"palisade.auth.v1.TeamService.CreateInvitation"}
