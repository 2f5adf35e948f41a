"""The team domain's refusals: each a status, a stable code and a safe message.

Nothing here says anything about another workspace: a member, invitation or workspace the
caller cannot see is `not_found`, exactly like one that does not exist.
"""

from __future__ import annotations

import grpc

from palisade.common.errors import (
    InvalidArgument,
    NotFound,
    PalisadeError,
    PermissionDenied,
    Unauthenticated,
)


class InvalidRole(InvalidArgument):
    code = "invalid_role"
    default_message = 'role must be "owner", "admin" or "member"'


class RoleAboveYours(PermissionDenied):
    code = "role_above_yours"
    default_message = "you cannot grant a role above your own or manage someone above it"


class InsufficientRole(PermissionDenied):
    """The gateway refuses these routes by role already; auth checks again in its database."""

    code = "insufficient_role"
    default_message = "your role in this workspace does not allow this"


class LastOwner(PalisadeError):
    status = grpc.StatusCode.ABORTED  # 409 at the gateway
    code = "last_owner"
    default_message = "a workspace keeps at least one owner; make someone else owner first"


class MemberNotFound(NotFound):
    code = "not_found"
    default_message = "no such member in this workspace"


class AlreadyMember(PalisadeError):
    status = grpc.StatusCode.ALREADY_EXISTS  # 409
    code = "already_member"
    default_message = "this address already belongs to a member of the workspace"


class InvitationNotFound(NotFound):
    code = "not_found"
    default_message = "no such invitation in this workspace"


class InvitationAccepted(PalisadeError):
    status = grpc.StatusCode.ALREADY_EXISTS  # 409
    code = "invitation_accepted"
    default_message = "this invitation was accepted already; remove the member instead"


class InvalidInvitation(Unauthenticated):
    code = "invalid_invitation"
    default_message = "this invitation link is invalid, revoked or already used"


class InvitationExpired(InvalidArgument):
    code = "invitation_expired"
    default_message = "this invitation has expired; ask for a new one"


class InvitationEmailMismatch(PermissionDenied):
    code = "invitation_email_mismatch"
    default_message = "this invitation is for another email address than the one you signed in with"


class SignInToAccept(Unauthenticated):
    """The invited address has an account: its owner accepts signed in, not with a new
    password (told only to someone holding the invitation, i.e. reading that inbox)."""

    code = "sign_in_required"
    default_message = "this address has an account: sign in with it, then accept the invitation"


class NewMemberDetailsRequired(InvalidArgument):
    code = "name_and_password_required"
    default_message = "to join without an account, send a name and a password"


class WorkspaceNotFound(NotFound):
    code = "not_found"
    default_message = "no such workspace among yours"


class EmailNotVerifiedToInvite(PermissionDenied):
    code = "email_not_verified"
    default_message = "verify your email address before you invite anyone"
