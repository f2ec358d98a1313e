"""Benchmark plugins: the same in-memory table served by a Python reader class (in-process) and
by an Arrow Flight server (out of process). The table is loaded from `path` (Parquet) once."""
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq


class TableReader:
    def initialize(self, config, context):
        self.batches = pq.read_table(config["path"]).to_batches(max_chunksize=config.get("batch_size", 65536))
        self.i = 0

    def get_schema(self):
        return self.batches[0].schema

    def read_batch(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return self.batches[self.i - 1]

    def get_incremental_state(self):
        return {"batches": self.i}

    def close(self):
        self.batches = []


def serve(port):
    import pyarrow.flight as flight

    class Server(flight.FlightServerBase):
        def do_get(self, context, ticket):
            config = json.loads(ticket.ticket)["config"]
            table = pq.read_table(config["path"])
            batches = table.to_batches(max_chunksize=config.get("batch_size", 65536))

            def gen():
                for i, b in enumerate(batches):
                    yield b, pa.py_buffer(json.dumps({"batches": i + 1}).encode())
            return flight.GeneratorStream(table.schema, gen())

    Server(f"grpc://127.0.0.1:{port}").serve()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
