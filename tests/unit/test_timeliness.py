"""Timeliness without services: ISO 8601 durations, the STAC timeliness fields of publication
messages, due times, and percentiles read from the latency histogram."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from db.models import Job
from db.stats import BUCKET_EDGES, Latency, bucket_of
from jobline.settings import Settings
from jobtypes.base import iso_duration
from jobtypes.demo import SnowCover

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(hours=3), "PT3H"),
        (timedelta(minutes=75), "PT1H15M"),
        (timedelta(hours=2), "PT2H"),
        (timedelta(days=1, hours=2), "P1DT2H"),
        (timedelta(days=2), "P2D"),
        (timedelta(seconds=90), "PT1M30S"),
        (timedelta(0), "PT0S"),
    ],
)
def test_iso_durations(value: timedelta, text: str) -> None:
    assert iso_duration(value) == text


def test_publication_messages_carry_the_stac_timeliness_fields(tmp_path: object) -> None:
    kind = SnowCover(Settings(data_dir=tmp_path))  # type: ignore[arg-type]
    job = Job(
        id=1, product_id="S2A_MSIL1C_20260110T103421_N0510_R108_T32TLR_20260110T123421",
        tile_id="T32TLR", input_publication_date=NOW, output_publication_date=NOW,
    )  # fmt: skip
    [message] = kind.publication_messages(job, [], "file:///out")
    properties = message.body["properties"]
    assert properties["product:timeliness"] == "PT3H"
    assert properties["product:timeliness_category"] == "NRT"


def test_due_time_from_publication_or_now() -> None:
    assert SnowCover.due_at(NOW, NOW + timedelta(hours=5)) == NOW + timedelta(hours=3)
    assert SnowCover.due_at(None, NOW) == NOW + timedelta(hours=3)


def test_the_demo_parses_the_sensing_time(tmp_path: object) -> None:
    kind = SnowCover(Settings(data_dir=tmp_path))  # type: ignore[arg-type]
    product = kind.parse_product(
        "file:///in/S2A_MSIL1C_20260110T103421_N0510_R108_T32TLR_20260110T123421.SAFE"
    )
    assert product is not None
    assert product.sensing_time == datetime(2026, 1, 10, 10, 34, 21, tzinfo=UTC)


def test_buckets_are_ordered_and_cover_each_value() -> None:
    assert list(BUCKET_EDGES) == sorted(BUCKET_EDGES)
    assert bucket_of(0.2) == 0
    assert bucket_of(1.0) == 1
    assert bucket_of(10**9) == len(BUCKET_EDGES)
    for seconds in (1.5, 59.0, 3600.0, 86_400.0):
        index = bucket_of(seconds)
        assert BUCKET_EDGES[index - 1] <= seconds < BUCKET_EDGES[index]


def test_histogram_percentiles_fall_in_the_exact_values_bucket() -> None:
    chance = random.Random(7)
    values = [chance.expovariate(1 / 900) + 1 for _ in range(5_000)]
    latency = Latency()
    for value in values:
        latency.add(bucket_of(value), 1, value, value, value)
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.95, 0.99):
        exact = ordered[math.ceil(q * len(ordered)) - 1]
        estimate = latency.percentile(q)
        assert estimate is not None
        assert bucket_of(estimate) == bucket_of(exact) or abs(estimate - exact) < 1e-9
    assert latency.percentile(1.0) == pytest.approx(max(values))
    assert Latency().percentile(0.5) is None
