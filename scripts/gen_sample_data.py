#!/usr/bin/env python3
"""Regenerates the bundled sample dataset in examples/data/orders (deterministic)."""
import csv, datetime, os, random

random.seed(42)
out = os.path.join(os.path.dirname(__file__), "..", "examples", "data", "orders")
os.makedirs(out, exist_ok=True)
regions = ["eu-west", "us-east", "us-west", "ap-south"]
start = datetime.datetime(2026, 1, 1)
oid = 0
for month in range(1, 4):
    with open(os.path.join(out, f"orders-2026-{month:02d}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "customer_id", "region", "amount", "quantity", "paid", "ordered_at"])
        for _ in range(4000):
            oid += 1
            ts = start + datetime.timedelta(days=31 * (month - 1), seconds=random.randrange(0, 86400 * 28))
            w.writerow([oid, random.randrange(1, 1500), random.choice(regions),
                        f"{random.uniform(1, 500):.2f}", random.randrange(1, 10),
                        random.choice(["true", "false"]), ts.strftime("%Y-%m-%dT%H:%M:%S")])
