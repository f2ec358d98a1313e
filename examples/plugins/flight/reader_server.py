#!/usr/bin/env python3
"""A dativo reader as an Arrow Flight server (pyarrow.flight): `implementation: grpc://host:port`.

DoGet's ticket is JSON {"config": …, "context": …}; the stream is the schema, then batches,
each carrying the JSON state that covers it in app_metadata. This one generates `rows` rows
(id, name, amount) from `context.state.next_id` on, optionally sleeping `delay` seconds per batch.

    python reader_server.py --port 50051 [--pidfile F] [--token SECRET] [--tls-cert C --tls-key K]
"""
import argparse
import json
import os
import time

import pyarrow as pa
import pyarrow.flight as flight

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), ("name", pa.string()), ("amount", pa.float64())])


class BearerMiddlewareFactory(flight.ServerMiddlewareFactory):
    def __init__(self, token):
        self.token = token

    def start_call(self, info, headers):
        got = headers.get("authorization", [""])[0]
        if got != f"Bearer {self.token}":
            raise flight.FlightUnauthenticatedError("a valid bearer token is required")
        return None


class Reader(flight.FlightServerBase):
    def do_get(self, context, ticket):
        req = json.loads(ticket.ticket)
        config, ctx = req.get("config") or {}, req["context"]
        unknown = set(config) - {"rows", "batch_size", "delay"}
        if unknown:
            raise flight.FlightServerError(f"unknown config keys {sorted(unknown)}")
        rows, size = int(config.get("rows", 1000)), int(config.get("batch_size", 1000))
        delay = float(config.get("delay", 0))
        start = int(((ctx.get("state") or {}).get("next_id")) or 1)

        def batches():
            i = start
            while i <= rows:
                end = min(i + size, rows + 1)
                ids = pa.array(range(i, end), pa.int64())
                b = pa.record_batch([ids, pa.array([f"name-{j}" for j in range(i, end)]),
                                     pa.compute.multiply(ids, 0.5)], schema=SCHEMA)
                i = end
                if delay:
                    time.sleep(delay)
                yield b, pa.py_buffer(json.dumps({"next_id": i}).encode())

        return flight.GeneratorStream(SCHEMA, batches())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pidfile")
    ap.add_argument("--token")
    ap.add_argument("--tls-cert", help="PEM certificate: serve grpc+tls")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    args = ap.parse_args()
    import pyarrow.compute  # noqa: F401  (pa.compute)
    mw = {"auth": BearerMiddlewareFactory(args.token)} if args.token else None
    if args.tls_cert:
        with open(args.tls_cert, "rb") as c, open(args.tls_key, "rb") as k:
            tls = [flight.CertKeyPair(c.read(), k.read())]
        server = Reader(f"grpc+tls://127.0.0.1:{args.port}", middleware=mw, tls_certificates=tls)
    else:
        server = Reader(f"grpc://127.0.0.1:{args.port}", middleware=mw)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(str(os.getpid()))
    server.serve()


if __name__ == "__main__":
    main()
