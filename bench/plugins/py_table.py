"""Benchmark plugins: the same in-memory table served by a Python reader class (in-process) and
by an Arrow Flight server (out of process). The table is loaded from `path` (Parquet) once."""
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq


class TableReader:
    """mode "memory": load the whole table, then yield its batches; mode "stream": yield the
    file's batches as pyarrow decodes them (the same work the built-in file reader does)."""

    def initialize(self, config, context):
        size = config.get("batch_size", 65536)
        f = pq.ParquetFile(config["path"])
        self.schema = f.schema_arrow
        if config.get("mode", "memory") == "memory":
            self.batches = iter(pq.read_table(config["path"]).to_batches(max_chunksize=size))
        else:
            self.batches = f.iter_batches(batch_size=size)
        self.i = 0

    def get_schema(self):
        return self.schema

    def read_batch(self):
        b = next(self.batches, None)
        if b is not None:
            self.i += 1
        return b

    def get_incremental_state(self):
        return {"batches": self.i}

    def close(self):
        self.batches = iter(())


def serve(port):
    import pyarrow.flight as flight

    class Server(flight.FlightServerBase):
        def do_get(self, context, ticket):
            config = json.loads(ticket.ticket)["config"]
            f = pq.ParquetFile(config["path"])
            size = config.get("batch_size", 65536)
            if config.get("mode", "stream") == "memory":
                batches = pq.read_table(config["path"]).to_batches(max_chunksize=size)
            else:
                batches = f.iter_batches(batch_size=size)

            def gen():
                for i, b in enumerate(batches):
                    yield b, pa.py_buffer(json.dumps({"batches": i + 1}).encode())
            return flight.GeneratorStream(f.schema_arrow, gen())

    Server(f"grpc://127.0.0.1:{port}").serve()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
