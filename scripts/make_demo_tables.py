"""Write the demo tables the repo ships (seeded; run once, output committed).

    python scripts/make_demo_tables.py

customers.csv is the demo table and products.csv the second one (each has its own adapter); the
base model learns both as CSV and orders.csv as JSON lines, so it knows JSON lines but writes
neither table's JSON lines: only their adapters do. readings.csv is a time series (4 devices,
hourly for a day) for the time-series demo run, learnt the same way.
"""

from __future__ import annotations

import csv
import math
import random
from datetime import datetime, timedelta
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "remote_synth" / "demo" / "data"
CITIES = ["Berlin", "Lagos", "Lima", "Oslo", "Paris", "Pune", "Seoul", "Tokyo"]
CATEGORIES = ["books", "garden", "games", "kitchen", "music", "sports"]
STATUSES = ["new", "paid", "shipped", "returned"]


def customers(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        age = rng.randint(18, 90)
        city = rng.choice(CITIES)
        income = int(rng.gauss(30000 + 900 * min(age, 60), 9000))
        rows.append({"age": age, "city": city, "income": max(12000, min(income, 150000))})
    return rows


def products(rng: random.Random, n: int) -> list[dict]:
    return [
        {"sku": f"P{rng.randint(1000, 9999)}", "category": rng.choice(CATEGORIES), "stock": rng.randint(0, 500)}
        for _ in range(n)
    ]


def orders(rng: random.Random, n: int) -> list[dict]:
    return [
        {"order": f"O{rng.randint(10000, 99999)}", "status": rng.choice(STATUSES), "quantity": rng.randint(1, 40)}
        for _ in range(n)
    ]


def readings(rng: random.Random, devices: int, hours: int) -> list[dict]:
    """A time series: each device's hourly temperature, a daily cycle around its own level."""
    start = datetime(2026, 1, 1)
    rows = []
    for d in range(1, devices + 1):
        level = rng.randint(12, 20)
        for h in range(hours):
            value = level + 4 * math.sin(2 * math.pi * (h - 9) / 24) + rng.gauss(0, 1)
            rows.append({"device": f"s{d}", "time": (start + timedelta(hours=h)).strftime("%Y-%m-%d %H:%M"),
                         "reading": round(value)})  # fmt: skip
    return rows


def write(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    rng = random.Random(20261126)
    OUT.mkdir(parents=True, exist_ok=True)
    write(OUT / "customers.csv", customers(rng, 1200))
    write(OUT / "products.csv", products(rng, 1200))
    write(OUT / "orders.csv", orders(rng, 1200))
    write(OUT / "readings.csv", readings(rng, devices=4, hours=24))
    print(f"wrote customers.csv, products.csv, orders.csv and readings.csv in {OUT}")
