"""{{name}}: a dativo reader. Replace the TODOs with your source.

    dativo plugin test {{name}}.Reader --config '{"rows": 2500}'
"""
import pyarrow as pa

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("name", pa.string())])


class Reader:
    def initialize(self, config, context):
        # config: the job's source.config mapping. context: job, stream, run_id, shard and
        # state (what get_incremental_state returned for the last committed batch, or None).
        if not isinstance(config, dict):
            raise TypeError("config must be a mapping, e.g. {rows: 1000}")
        unknown = set(config) - {"rows", "batch_size"}
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}: expected rows, batch_size")
        self.rows = int(config.get("rows", 100))
        self.batch_size = int(config.get("batch_size", 1000))
        self.next_id = int((context.get("state") or {}).get("next_id", 1))
        # TODO: connect to your source here. Raise ConnectionError for network failures
        # (dativo retries them); any other exception fails the run with its traceback.
        # Say what kind of failure it is with dativo's exception classes (or any exception
        # with a `dativo_kind` attribute): `raise dativo.AuthError("HTTP 401 from the API")`
        # exits 3 like a rejected password, dativo.ConfigError 2, dativo.DataError 4,
        # dativo.TransientError is retried. `import dativo` works inside dativo only.

    def get_schema(self):
        # TODO: the columns of your source. Every batch must have exactly this schema.
        return SCHEMA

    def read_batch(self):
        if self.next_id > self.rows:
            return None  # end of stream
        end = min(self.next_id + self.batch_size, self.rows + 1)
        # TODO: fetch the next batch from your source.
        ids = list(range(self.next_id, end))
        names = [None if i % 10 == 0 else f"name-{i}" for i in ids]
        self.next_id = end
        return pa.record_batch([pa.array(ids, pa.int64()), pa.array(names, pa.string())], schema=SCHEMA)

    def get_incremental_state(self):
        # Must cover exactly the batches returned so far: the next run resumes from it.
        return {"next_id": self.next_id}

    def close(self):
        # TODO: release connections. Called exactly once, also after a failure.
        pass
