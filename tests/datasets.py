"""Test data made on the fly: no checked-in megabytes."""

from __future__ import annotations

import csv
import io
import random
from datetime import date, timedelta

COUNTRIES = {
    "Germany": 83_200_000,
    "France": 67_800_000,
    "Italy": 59_000_000,
    "Spain": 47_400_000,
    "Japan": 125_700_000,
    "Brazil": 214_300_000,
    "India": 1_408_000_000,
    "Canada": 38_200_000,
    "Kenya": 53_000_000,
    "Chile": 19_500_000,
}


def covid_csv(days: int = 400, seed: int = 7) -> bytes:
    """A covid_worldwide.csv look-alike: date, country, cases, deaths, recovered, population."""
    rng = random.Random(seed)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["date", "country", "cases", "deaths", "recovered", "population"])
    start = date(2020, 3, 1)
    for country, population in COUNTRIES.items():
        cases = deaths = recovered = 0
        wave = rng.uniform(0.5, 2.0)
        for day in range(days):
            new = int(population * 1e-5 * wave * (1 + rng.random()) * (1.5 + (day % 120) / 60))
            cases += new
            deaths += int(new * rng.uniform(0.005, 0.02))
            recovered += int(new * rng.uniform(0.8, 0.95))
            writer.writerow(
                [(start + timedelta(days=day)).isoformat(), country, cases, deaths, recovered, population]
            )
    return out.getvalue().encode()
