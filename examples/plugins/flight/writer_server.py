#!/usr/bin/env python3
"""A dativo writer as an Arrow Flight server (pyarrow.flight): `implementation: grpc://host:port`.

DoAction initialize/finalize/abort/close/committed_state with JSON bodies carrying a `session`;
batches arrive on DoPut streams (descriptor cmd = {"session": …}). finalize writes the session's
batches to `<path>/part-<n>.parquet` and then `<path>/part-<n>.state` (the commit point) —
exactly once, and committed_state reads the newest state back.

    python writer_server.py --port 50052 [--pidfile F]
"""
import argparse
import json
import os
import threading

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq


class Writer(flight.FlightServerBase):
    def __init__(self, location):
        super().__init__(location)
        self.sessions = {}
        self.lock = threading.Lock()

    def do_put(self, context, descriptor, reader, writer):
        session = json.loads(descriptor.command)["session"]
        table = reader.read_all()
        with self.lock:
            self.sessions[session]["pending"].append(table)

    def do_action(self, context, action):
        body = json.loads(action.body.to_pybytes())
        kind, session = action.type, body.get("session")
        with self.lock:
            if kind == "initialize":
                config = body.get("config")
                if not isinstance(config, dict) or "path" not in config:
                    raise flight.FlightServerError("config needs `path`: the output directory")
                os.makedirs(config["path"], exist_ok=True)
                self.sessions[session] = {"path": config["path"], "pending": []}
                return []
            s = self.sessions.get(session)
            if kind == "committed_state":
                path = s["path"] if s else None
                states = sorted(f for f in os.listdir(path) if f.endswith(".state")) if path else []
                if not states:
                    return []
                with open(os.path.join(path, states[-1]), "rb") as f:
                    return [f.read()]
            if kind == "abort":
                if s:
                    s["pending"] = []
                return []
            if kind == "close":
                self.sessions.pop(session, None)
                return []
            if kind == "finalize":
                commit = body["commit"]
                n = len([f for f in os.listdir(s["path"]) if f.endswith(".state")]) + 1
                rows = 0
                final = os.path.join(s["path"], f"part-{n:06d}.parquet")
                if s["pending"]:
                    t = pa.concat_tables(s["pending"])
                    rows = t.num_rows
                    pq.write_table(t, final + ".tmp")
                    os.replace(final + ".tmp", final)
                state = os.path.join(s["path"], f"part-{n:06d}.state")
                with open(state + ".tmp", "w") as f:
                    json.dump({"state": commit.get("state"), "run_id": commit.get("run_id")}, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(state + ".tmp", state)
                s["pending"] = []
                return [json.dumps({"rows": rows, "files": [final] if rows else []}).encode()]
        raise flight.FlightServerError(f"unknown action {kind}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pidfile")
    args = ap.parse_args()
    server = Writer(f"grpc://127.0.0.1:{args.port}")
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(str(os.getpid()))
    server.serve()


if __name__ == "__main__":
    main()
