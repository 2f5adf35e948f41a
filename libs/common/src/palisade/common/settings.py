"""Typed settings read once from the environment: the base every service's config extends.

Only config modules read the environment. Every field has a default that works in the embedded
single-machine mode, so a service starts with no configuration at all.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from palisade.common.event_loop import EventLoopName


def _default_data_dir() -> Path:
    return Path.cwd() / "var"


class CommonSettings(BaseSettings):
    """Fields shared by every service; subclasses set env_prefix (e.g. PALISADE_CRYPTO_)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    # Where the embedded default keeps SQLite files, keys and mail. Shared by all services.
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        validation_alias=AliasChoices("PALISADE_DATA_DIR", "data_dir"),
    )
    # This service's internal signing keys (caller assertions): the keys of the edges it is on
    # (palisade.common.edges), nothing else. In Kubernetes, the service's own mounted Secret;
    # read from PALISADE_<SERVICE>_INTERNAL_KEYS_FILE. Default: <data_dir>/keys/<service>.json.
    internal_keys_file: Path | None = None
    # The embedded default's master file of every edge's keys, from which each service writes
    # its own file on start (only with create_missing_keys). Default: <data_dir>/keys/edges.json.
    edge_keys_master_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("PALISADE_EDGE_KEYS_MASTER_FILE", "edge_keys_master_file"),
    )
    # Create missing key files on start (embedded default). Production sets false and mounts them.
    create_missing_keys: bool = Field(
        default=True,
        validation_alias=AliasChoices("PALISADE_CREATE_MISSING_KEYS", "create_missing_keys"),
    )
    # How long a signed caller assertion lives; short, because it is minted per call.
    assertion_ttl_seconds: int = Field(default=60, ge=5, le=300)
    # Caller-assertion ids remembered (per process) to refuse replays; about 200 bytes each.
    replay_cache_entries: int = Field(default=100_000, ge=1000)
    # Interface and port of the gRPC server; port 0 picks a free one (tests).
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=0, ge=0, le=65535)
    # Prometheus /metrics HTTP endpoint; port 0 picks a free one.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # SQLAlchemy URL (postgresql+psycopg://... in production); unset: a SQLite file in data_dir.
    database_url: str | None = None
    # Postgres connections each of this process's pools keeps open (auth has two: transactions
    # and single-statement reads, so up to 2 x (pool + overflow) connections per process).
    # Enough for the requests in flight to hold one at once: a request beyond the pool opens an
    # overflow connection (a TCP and authentication handshake, several times a small query's
    # cost) that is closed again after use, so a pool that is too small turns load into
    # connection churn. A read holds its connection for well under a millisecond.
    database_pool_size: int = Field(default=16, ge=1, le=500)
    # Extra connections per pool under bursts beyond it, closed again when returned.
    database_max_overflow: int = Field(default=8, ge=0, le=500)
    # Apply this service's migrations at start-up (otherwise run the `migrate` command).
    migrate_on_start: bool = True
    # Seconds in-flight RPCs get to finish after SIGTERM.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    log_level: str = "INFO"
    # The event loop of a served process (palisade.common.event_loop): "uvloop" or "asyncio".
    event_loop: EventLoopName = "uvloop"

    def resolved_internal_keys_file(self, service: str) -> Path:
        return self.internal_keys_file or self.data_dir / "keys" / f"{service}.json"

    def resolved_edge_keys_master_file(self) -> Path:
        return self.edge_keys_master_file or self.data_dir / "keys" / "edges.json"
