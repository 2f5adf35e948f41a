"""The visitors service's settings, read once from PALISADE_VISITORS_* (and shared PALISADE_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from palisade.common.settings import CommonSettings

SERVICE_NAME = "visitors"


class VisitorsSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="PALISADE_VISITORS_", frozen=True, extra="ignore")

    grpc_port: int = Field(default=50055, ge=0, le=65535)
    metrics_port: int = Field(default=9105, ge=0, le=65535)
    # Where the crypto service listens: every name, email and phone is encrypted (and its
    # blind index computed) there; while it is away PII routes answer UNAVAILABLE.
    crypto_target: str = "127.0.0.1:50051"
    # Where the audit service listens: the event outbox is forwarded there in batches
    # (palisade.common.audit_forwarder); while audit is away, events wait in the outbox.
    audit_target: str = "127.0.0.1:50054"
    audit_batch_size: int = Field(default=100, ge=1, le=1000)
    audit_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # The background rewrap job: moves rows whose envelopes are under an older data key
    # version to the primary (crypto's Rewrap, no plaintext here). Rows per second at most,
    # rows per Rewrap call, and how often it looks for work once everything is current.
    rewrap_enabled: bool = True
    rewrap_rows_per_second: float = Field(default=200.0, gt=0, le=100_000)
    rewrap_batch_rows: int = Field(default=100, ge=1, le=300)
    rewrap_poll_seconds: float = Field(default=60.0, gt=0)
    # The signed page-token key of the chats routes (a file beside the signing keys).
    page_token_key_file: Path | None = None

    def resolved_page_token_key_file(self) -> Path:
        return self.page_token_key_file or self.data_dir / "keys" / "visitors-page-tokens.json"
