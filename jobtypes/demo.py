"""The demo job type: fractional snow cover (FSC) maps from Sentinel-2-style products.

Input products are ``.SAFE`` folders named like
``S2A_MSIL1C_20260110T103421_N0510_R108_T32TLR_20260110T123456.SAFE`` holding two small grids of
reflectance values (``B03.txt`` green, ``B11.txt`` short-wave infrared). The processing
(``demo_assets/snow_cover.sh``, POSIX sh + awk) computes the NDSI and from it the snow cover
fraction per pixel, and writes ``FSC_<date>_<tile>.asc`` plus a JSON summary.

Snow maps are a time series per tile: a product's job waits (``configured``) while an older
product of the same tile is still unfinished.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from db.records import JobFilter
from db.statuses import TERMINAL, Status
from jobtypes.base import Configuration, JobType, Product

if TYPE_CHECKING:
    from db.models import Job
    from db.store import JobStore

ASSETS = Path(__file__).parent / "demo_assets"
SCRIPT_IN_IMAGE = "/opt/snowcover/snow_cover.sh"

PRODUCT_NAME = re.compile(
    r"^(?P<mission>S2[ABC])_MSIL1C_(?P<sensing>\d{8}T\d{6})_N\d{4}_R\d{3}_"
    r"(?P<tile>T\d{2}[A-Z]{3})_(?P<generated>\d{8}T\d{6})$"
)


def sensing_time(product_id: str) -> datetime | None:
    """The acquisition time encoded in a Sentinel-2 product id."""
    match = PRODUCT_NAME.match(product_id)
    if match is None:
        return None
    return datetime.strptime(match["sensing"], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)


class SnowCover(JobType):
    name = "snow_cover"
    input_product_type = "S2MSI1C"
    queue = "snow"
    image = "jobline/snow-cover:0.1"
    command = ["/bin/sh", SCRIPT_IN_IMAGE, "input", "output"]
    local_command = ["sh", str(ASSETS / "snow_cover.sh"), "input", "output"]
    worker_flavor = "extra_small"
    output_products = ["FSC"]
    max_attempts = 3
    timeout = 300.0
    product_glob = "*.SAFE"
    # Snow maps are wanted within 3 hours of the input's publication (STAC product:timeliness).
    timeliness_target = timedelta(hours=3)
    timeliness_category = "NRT"

    def parse_product(self, path: str, publication_date: datetime | None = None) -> Product | None:
        product_id = Path(path.rstrip("/")).name.removesuffix(".SAFE")
        match = PRODUCT_NAME.match(product_id)
        if match is None:
            return None
        return Product(
            product_id=product_id,
            path=path,
            tile_id=match["tile"],
            publication_date=publication_date,
            sensing_time=sensing_time(product_id),
        )

    def configure_job(self, job: Job, store: JobStore) -> Configuration:
        """Ready unless an older product of the same tile is still unfinished."""
        sensed = sensing_time(job.product_id)
        unfinished = store.list_jobs(
            JobFilter(
                job_type=job.job_type,
                tile_id=job.tile_id,
                statuses=tuple(s for s in Status if s not in TERMINAL),
            ),
            limit=10_000,
        ).jobs
        older = sorted(
            other.product_id
            for other in unfinished
            if other.id != job.id
            and sensed is not None
            and (other_sensed := sensing_time(other.product_id)) is not None
            and other_sensed < sensed
        )
        config: dict[str, Any] = {"sensing_time": sensed.isoformat() if sensed else None}
        if older:
            return Configuration(
                ready=False, reason=f"waiting for the older product {older[0]}", config=config
            )
        return Configuration(
            ready=True, reason="no older unfinished product of this tile", config=config
        )

    def output_product_id(self, job: Job) -> str:
        sensed = sensing_time(job.product_id)
        date = sensed.strftime("%Y%m%d") if sensed else "unknown"
        return f"FSC_{date}_{job.tile_id}"

    def geometry(self, job: Job) -> dict[str, Any] | None:
        return None  # The demo grid has no real footprint.


def write_sample_products(
    root: Path,
    count: int = 8,
    tiles: tuple[str, ...] = ("T32TLR", "T31TCH"),
    size: int = 16,
    start: datetime = datetime(2026, 1, 10, 10, 34, 21, tzinfo=UTC),
) -> list[Path]:
    """Write ``count`` demo input products under ``root``: two tiles, several dates, one grid
    each. Deterministic: the same call writes the same products (existing ones are kept)."""
    root.mkdir(parents=True, exist_ok=True)
    products = []
    for index in range(count):
        tile = tiles[index % len(tiles)]
        sensed = start + timedelta(days=5 * (index // len(tiles)))
        generated = sensed + timedelta(hours=2)
        name = f"S2A_MSIL1C_{sensed:%Y%m%dT%H%M%S}_N0510_R108_{tile}_{generated:%Y%m%dT%H%M%S}.SAFE"
        folder = root / name
        if not folder.exists():
            _write_grids(folder, seed=index, size=size)
        products.append(folder)
    return products


def _write_grids(folder: Path, seed: int, size: int) -> None:
    rng = random.Random(seed)
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    green_rows, swir_rows = [], []
    snow_line = rng.randint(size // 4, 3 * size // 4)
    for row in range(size):
        green, swir = [], []
        for _column in range(size):
            snowy = row < snow_line
            green.append(rng.randint(6000, 9000) if snowy else rng.randint(500, 1500))
            swir.append(rng.randint(300, 1200) if snowy else rng.randint(1200, 2500))
        green_rows.append(" ".join(map(str, green)))
        swir_rows.append(" ".join(map(str, swir)))
    (partial / "B03.txt").write_text("\n".join(green_rows) + "\n")
    (partial / "B11.txt").write_text("\n".join(swir_rows) + "\n")
    partial.rename(folder)  # a product appears whole, as in object storage
