"""Passkeys (WebAuthn L3): registration, login (email-first or username-less) and management.

One object for the composition root and the servicer; each ceremony lives in its own module
(registration.py, login.py, management.py) on the shared helpers of ceremony.py. JSON in and
out is webauthn_json.py; options and verification (the py_webauthn calls) webauthn_ceremony.py.
"""

from __future__ import annotations

from palisade.auth.passkeys.login import PasskeyLogin
from palisade.auth.passkeys.management import PasskeyManagement
from palisade.auth.passkeys.registration import PasskeyRegistration


class Passkeys(PasskeyRegistration, PasskeyLogin, PasskeyManagement):
    """Registration, login and management of passkeys, sharing one PasskeyCeremonies state."""
