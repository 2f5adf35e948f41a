"""The auth service's settings, read once from PALISADE_AUTH_* (and shared PALISADE_*)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from palisade.auth.accounts.restrictions import DEFAULT_RESTRICTIONS, check_actions
from palisade.common.settings import CommonSettings

SERVICE_NAME = "auth"


class AuthSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="PALISADE_AUTH_", frozen=True, extra="ignore")

    grpc_port: int = Field(default=50052, ge=0, le=65535)
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    # Where the crypto service listens (PII and refresh successors are encrypted there).
    crypto_target: str = "127.0.0.1:50051"
    # Where the apikeys service listens: a removed member's or a disabled account's API keys
    # are revoked there (RevokeKeysOfUser, from the key revocation outbox; auth starts and
    # queues requests while apikeys is not up yet).
    apikeys_target: str = "127.0.0.1:50053"
    # How often the key revocation relay looks for requests to (re)send; a request made in
    # this process wakes it at once.
    key_revocation_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # Where the audit service listens: the security-event outbox is forwarded there in
    # batches (palisade.common.audit_forwarder); while audit is away, events wait in the outbox.
    audit_target: str = "127.0.0.1:50054"
    # Events per Ingest call (audit takes at most 1000), and how often the forwarder looks for
    # new events once the outbox is drained.
    audit_batch_size: int = Field(default=100, ge=1, le=1000)
    audit_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # Redis for login throttling and the revocation channel; unset: in-process stand-ins
    # (correct for the single auth process of the embedded default).
    redis_url: str | None = None
    # How often the revocation feed sends a heartbeat (gateways forget their token caches
    # when they hear none for about 2 s; keep this well under their deadline).
    revocation_heartbeat_seconds: float = Field(default=0.5, gt=0, le=1.0)
    # A MaxMind DB file (e.g. GeoLite2-City.mmdb) to show where sessions are; unset: no location.
    geoip_database: Path | None = None
    # Auth's own stable secret (throttle keys, passkey decoys; never rotated with the index
    # key). Default: <data_dir>/keys/auth-local.json, created on first run when
    # create_missing_keys; a mounted Kubernetes Secret in production.
    local_keys_file: Path | None = None

    # Argon2id parameters (RFC 9106 / OWASP minimum: m=19456 KiB, t=2, p=1). Hashes made with
    # other parameters are re-hashed at the next successful login.
    argon2_memory_kib: int = Field(default=19456, ge=19456)
    argon2_time_cost: int = Field(default=2, ge=2)
    argon2_parallelism: int = Field(default=1, ge=1)
    # Threads that hash passwords, off the event loop (default: one per core).
    hashing_threads: int | None = Field(default=None, ge=1)

    access_token_seconds: int = Field(default=3600, ge=60)
    refresh_token_seconds: int = Field(default=24 * 3600, ge=60)
    remember_me_refresh_token_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    # After a refresh token is rotated, presenting it again within this many seconds returns
    # the same successor (concurrent requests); later, it revokes the whole family.
    refresh_grace_seconds: int = Field(default=60, ge=0, le=300)
    # A session ends this long after login however often it is refreshed.
    session_absolute_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    remember_me_session_absolute_seconds: int = Field(default=30 * 24 * 3600, ge=60)

    # Login throttling: failures counted per client IP, per (account, IP) and per account;
    # a count decays after its window passes without failures; a success resets the account's.
    throttle_ip_failures: int = Field(default=50, ge=1)
    throttle_account_ip_failures: int = Field(default=10, ge=1)
    throttle_account_failures: int = Field(default=100, ge=1, le=100)
    throttle_window_seconds: int = Field(default=900, ge=1)
    throttle_account_window_seconds: int = Field(default=3600, ge=1)

    # Where people reach Palisade (magic links point here) and the passkey relying party.
    public_base_url: str = "http://localhost:8080"
    passkey_rp_id: str = "localhost"
    passkey_rp_name: str = "Palisade"
    # Origins allowed in WebAuthn client data (JSON list in the environment).
    passkey_origins: tuple[str, ...] = ("http://localhost:8080", "http://127.0.0.1:8080")
    # WebAuthn challenges, MFA tokens: server-side, single-use, short-lived.
    passkey_challenge_seconds: int = Field(default=300, ge=30, le=600)
    mfa_token_seconds: int = Field(default=300, ge=30, le=900)
    # Second-factor failures per user (TOTP and backup codes together); re-entering the
    # password does not reset the count.
    mfa_failures: int = Field(default=10, ge=1, le=100)
    mfa_window_seconds: int = Field(default=900, ge=1)
    totp_issuer: str = "Palisade"
    # Disabling TOTP, new backup codes, passkey changes: the session's login must be this recent.
    recent_auth_seconds: int = Field(default=600, ge=30)
    # What an account may not do before its email address is verified (JSON list of
    # "create_api_keys", "invite_members", "enrol_second_factor"); "enrol_second_factor" is
    # always added (pre-hijacking defence, see accounts/restrictions.py).
    unverified_restrictions: tuple[str, ...] = DEFAULT_RESTRICTIONS

    magic_link_seconds: int = Field(default=900, ge=60, le=3600)
    # Magic-link requests within the window: per (email, client IP or IPv6 /64), so one
    # stranger can't spend an email's allowance; per email from everywhere (higher); per client.
    magic_link_email_ip_requests: int = Field(default=5, ge=1)
    magic_link_email_requests: int = Field(default=20, ge=1)
    magic_link_ip_requests: int = Field(default=20, ge=1)
    magic_link_window_seconds: int = Field(default=900, ge=1)

    # Email verification and email change (links to {public_base_url}/auth/verify-email):
    # how long a link works; resends per user, and email-change requests per user, within
    # the window (each answers 429 rate_limited past its limit).
    email_verification_seconds: int = Field(default=24 * 3600, ge=600, le=7 * 24 * 3600)
    email_change_seconds: int = Field(default=24 * 3600, ge=600, le=7 * 24 * 3600)
    email_verification_resends: int = Field(default=3, ge=1, le=100)
    email_change_requests: int = Field(default=5, ge=1, le=100)
    email_link_window_seconds: int = Field(default=3600, ge=60)
    # PKCE-bound magic links: wrong or missing verifiers per (link, client network) within
    # magic_link_window_seconds before that client is refused (429) for that link.
    magic_link_verifier_failures: int = Field(default=5, ge=1, le=100)

    # Password reset: how long an emailed link works (SECURITY.md 42: 30 minutes), and the
    # requests counted within the window: per (email, client IP or IPv6 /64) and per email
    # from everywhere (over either: answered 202 as usual, nothing sent), per client (429).
    password_reset_seconds: int = Field(default=1800, ge=300, le=3600)
    password_reset_email_ip_requests: int = Field(default=3, ge=1)
    password_reset_email_requests: int = Field(default=10, ge=1)
    password_reset_ip_requests: int = Field(default=20, ge=1)
    password_reset_window_seconds: int = Field(default=900, ge=1)

    # New-network sign-in alerts: how long their "this wasn't me" link works.
    not_me_link_seconds: int = Field(default=7 * 86400, ge=3600, le=30 * 86400)
    # At most this many new-network alert emails per account within any rolling 24 hours
    # (sessions/new_networks.py): a stolen password or a phone hopping mobile networks must not
    # flood the inbox. Past it every sign-in is still logged (session.new_ip) and its network
    # remembered, and one email says alerts are paused until the window has room again.
    new_network_alerts_per_day: int = Field(default=5, ge=1, le=100)

    # Outgoing email: SMTP when smtp_host is set; otherwise .eml files in mail_dir
    # (default <data dir>/mail), the embedded default.
    mail_from: str = "Palisade <no-reply@localhost>"
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    mail_dir: Path | None = None
    # The outbox relay: how often it looks for due emails, and when it gives up on one.
    mail_poll_seconds: float = Field(default=5.0, gt=0)
    mail_max_attempts: int = Field(default=8, ge=1)

    # `palisade-auth reindex`: users per batch (one Decrypt and one BlindIndex call each), and
    # the pause between batches, so a run against production leaves room for live traffic.
    reindex_batch_size: int = Field(default=200, ge=1, le=1000)
    reindex_pause_seconds: float = Field(default=0.2, ge=0)

    # Subject keys (auth/subjects.py): rows sealed before them are moved under their user's
    # subject by `palisade-auth subjects migrate`, and, unless this is false, by every auth
    # replica in the background at start (resumable and idempotent; replicas racing on a row
    # cost a wasted encryption, never a wrong write). Rows per batch (one Decrypt and one
    # Encrypt call each) and the pause between batches, to leave crypto room for traffic.
    subject_migration_on_start: bool = True
    subject_migration_batch_size: int = Field(default=200, ge=1, le=500)
    subject_migration_pause_seconds: float = Field(default=0.1, ge=0)
    # How often queued subject shreds of deleted accounts are sent or retried (a deletion
    # sends its own at once; this is for crypto outages and crashes).
    subject_shred_poll_seconds: float = Field(default=1.0, gt=0, le=60)

    @field_validator("unverified_restrictions")
    @classmethod
    def _known_actions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return check_actions(value)

    def resolved_local_keys_file(self) -> Path:
        return self.local_keys_file or self.data_dir / "keys" / "auth-local.json"
