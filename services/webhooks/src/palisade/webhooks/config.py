"""The webhooks service's settings, read once from PALISADE_WEBHOOKS_* (and shared PALISADE_*).

Some fields are read only by the delivery worker and the intake (palisade.webhooks.delivery /
.intake); they live here too, so the service has one settings object.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from palisade.common.settings import CommonSettings
from palisade.webhooks.egress.addresses import IPNetwork, parse_allowed_networks

SERVICE_NAME = "webhooks"

# Svix's schedule (issue 15): about a day and a half of retries after the first attempt.
DEFAULT_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


class WebhooksSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="PALISADE_WEBHOOKS_", frozen=True, extra="ignore")

    grpc_port: int = Field(default=50056, ge=0, le=65535)
    metrics_port: int = Field(default=9106, ge=0, le=65535)
    # Where the crypto service listens: every URL and signing secret is sealed there (and
    # opened for each delivery); while it is away, creating or reading endpoints answers
    # UNAVAILABLE and deliveries wait.
    crypto_target: str = "127.0.0.1:50051"
    # Where the audit service listens: this service's own webhook.* events are forwarded there
    # from the outbox, and the intake reads its StreamEvents (the source of every delivery).
    audit_target: str = "127.0.0.1:50054"
    audit_batch_size: int = Field(default=100, ge=1, le=1000)
    audit_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # Where auth listens: the worker asks its SendNotice to email a workspace's owners when an
    # endpoint is disabled after failing for disable_after_failing_seconds.
    auth_target: str = "127.0.0.1:50052"
    # Networks (JSON list of CIDRs) that webhook URLs may reach although they are internal,
    # and over plain http: empty by default, so only public https receivers work. Tests and
    # the embedded demo set ["127.0.0.0/8"] to deliver to a local receiver.
    allowed_networks: tuple[IPNetwork, ...] = ()
    # How long the creation-time check of a URL may wait for DNS before refusing it.
    url_resolve_seconds: float = Field(default=5.0, gt=0, le=30)

    # --- the delivery worker (palisade.webhooks.delivery) ---
    # Run the worker and the intake in this process (tests that drive them set False).
    worker_enabled: bool = True
    # One deadline per attempt, from DNS to the last byte of the response.
    delivery_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    # At most this much of a response body is read (the rest is cut off, the status counts).
    max_response_bytes: int = Field(default=64 * 1024, ge=0, le=16 * 1024 * 1024)
    # Delays after attempt 1, 2, … (seconds, JSON list); a delivery fails for good once every
    # delay is spent. Each delay is jittered by up to retry_jitter (a fraction, either way).
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    retry_jitter: float = Field(default=0.2, ge=0, le=1)
    # A receiver's Retry-After is honoured up to this many seconds (never shorter than ours).
    max_retry_after_seconds: float = Field(default=86_400.0, ge=0)
    # An endpoint whose every attempt has failed for this long is disabled ("failing") and
    # the workspace's owners are emailed once.
    disable_after_failing_seconds: float = Field(default=5 * 86_400.0, gt=0)
    # Attempts in flight at once: in the whole process, per endpoint (so one slow receiver
    # cannot take every slot) and per workspace (so one workspace's many hanging endpoints
    # cannot either; None: a quarter of the slots, at least per_endpoint_concurrency).
    worker_concurrency: int = Field(default=32, ge=1, le=1024)
    per_endpoint_concurrency: int = Field(default=2, ge=1, le=64)
    per_workspace_concurrency: int | None = Field(default=None, ge=1, le=1024)
    # Due deliveries claimed per query, the lease each claim holds (a worker that dies
    # mid-attempt leaves the row to another after it; longer than an attempt's deadline),
    # and how often the queue is polled when it had nothing due.
    claim_batch_size: int = Field(default=50, ge=1, le=1000)
    claim_lease_seconds: float = Field(default=60.0, gt=0)
    worker_poll_seconds: float = Field(default=0.5, gt=0, le=60)

    # --- the intake (palisade.webhooks.intake) ---
    # Where a stream with no cursor yet starts: "now" (only events from then on) or "0"
    # (everything audit still holds).
    stream_start: str = "now"
    # Wait before reconnecting a stream that ended or failed.
    stream_retry_seconds: float = Field(default=1.0, gt=0, le=300)

    # The signed page-token key of ListDeliveries (a file beside the signing keys).
    page_token_key_file: Path | None = None

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> tuple[IPNetwork, ...]:
        if isinstance(value, tuple) and all(not isinstance(v, str) for v in value):
            return value  # already parsed (a test built the settings)
        return parse_allowed_networks(value)  # type: ignore[arg-type]

    @field_validator("retry_schedule")
    @classmethod
    def _schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or len(value) > 50 or any(d <= 0 for d in value):
            raise ValueError("retry_schedule must be 1 to 50 positive delays")
        return value

    @field_validator("stream_start")
    @classmethod
    def _stream_start(cls, value: str) -> str:
        if value not in ("now", "0"):
            raise ValueError('stream_start must be "now" or "0"')
        return value

    def resolved_page_token_key_file(self) -> Path:
        return self.page_token_key_file or self.data_dir / "keys" / "webhooks-page-tokens.json"
