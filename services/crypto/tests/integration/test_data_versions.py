"""ReportDataVersions over real gRPC, on SQLite and Postgres: recorded for the verified caller,
replacing its last report; what `keys retire --below N` (data keys) reads."""

from __future__ import annotations

import pytest

from palisade.crypto.data_consumers import DataReport, data_reports, data_retire_blockers
from palisade_api.crypto.v1 import crypto_pb2 as pb

from .conftest import crypto_settings, running_crypto


@pytest.fixture
async def crypto(tmp_path, database_url):
    async with running_crypto(crypto_settings(tmp_path, database_url)) as harness:
        yield harness


async def _report(crypto, service: str, versions: list[int]) -> None:
    await crypto.stub.ReportDataVersions(
        pb.ReportDataVersionsRequest(versions_in_use=versions), metadata=crypto.metadata(service)
    )


async def test_reports_are_per_verified_service_and_replace_the_last(crypto) -> None:
    await _report(crypto, "visitors", [2, 1, 1])
    await _report(crypto, "auth", [])
    crypto.clock.advance(5)
    await _report(crypto, "visitors", [2])
    reports = await data_reports(crypto.server.engine)
    assert [(r.service, r.versions_in_use) for r in reports] == [("auth", []), ("visitors", [2])]
    assert data_retire_blockers(2, reports) == []
    [reason] = data_retire_blockers(3, reports)
    assert "'visitors'" in reason
    assert "v2" in reason


def test_only_a_version_below_the_line_blocks() -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 1, 1, tzinfo=UTC)
    reports = [DataReport("visitors", [1, 3], at), DataReport("other", [], at)]
    assert data_retire_blockers(1, reports) == []
    assert len(data_retire_blockers(2, reports)) == 1
