"""The shop under a crowd: shoppers browse the catalog, place orders and list them; staff
request sales reports. Run by ``python -m bench.locust_run`` (a local stack, figures into
``bench/results/locust.json``), or unchanged by ``locust`` itself against any deployment, in
one process or distributed (docs/observability.md, "Load").

The users it signs in as come from a JSON file named by ``BENCH_LOCUST_FIXTURE``:
``{"shoppers": [token, ...], "staff": [token, ...], "products": [id, ...]}``. Logging in is
not part of the scenario on purpose: login is rate limited per address and costs an Argon2
hash, so a crowd from a few load machines would measure the limiter, not the shop.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from locust import HttpUser, between, task

PAGE = 50


@cache
def fixture() -> dict[str, list[str]]:
    path = os.environ.get("BENCH_LOCUST_FIXTURE")
    if not path:
        raise SystemExit("BENCH_LOCUST_FIXTURE names no file: see bench/locustfile.py")
    loaded: dict[str, list[str]] = json.loads(Path(path).read_text(encoding="utf-8"))
    return loaded


# Each simulated user signs in as the next account, so accounts are shared only when the
# crowd is larger than the fixture (the per-account rate limits then bite, as they would).
_next_account = itertools.count()


def _bearer(tokens: list[str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[next(_next_account) % len(tokens)]}"}


class Shopper(HttpUser):
    weight = 20
    # Think time: a person reads a page before the next click.
    wait_time = between(0.5, 2.0)
    headers: dict[str, str]

    def on_start(self) -> None:
        self.headers = _bearer(fixture()["shoppers"])

    @task(6)
    def browse_the_catalog(self) -> None:
        self.client.get(f"/products?limit={PAGE}", name="/products")
        product = random.choice(fixture()["products"])
        self.client.get(f"/products/{product}", name="/products/{id}")

    @task(3)
    def list_my_orders(self) -> None:
        self.client.get(f"/orders?limit={PAGE}", headers=self.headers, name="/orders")

    @task(1)
    def place_an_order(self) -> None:
        products = random.sample(fixture()["products"], 2)
        body: dict[str, Any] = {
            "items": [{"product_id": product, "quantity": 1} for product in products]
        }
        self.client.post("/orders", json=body, headers=self.headers, name="/orders")


class Staff(HttpUser):
    weight = 1
    wait_time = between(5.0, 10.0)
    headers: dict[str, str]

    def on_start(self) -> None:
        self.headers = _bearer(fixture()["staff"])

    @task
    def request_a_sales_report(self) -> None:
        end = date.today()
        body = {"start": (end - timedelta(days=7)).isoformat(), "end": end.isoformat()}
        with self.client.post(
            "/reports", json=body, headers=self.headers, name="/reports", catch_response=True
        ) as response:
            if response.status_code != 202:
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            location = response.headers["location"]
        self.client.get(location, headers=self.headers, name="/jobs/{id}")
