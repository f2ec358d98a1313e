"""Example dativo plugins in Python.

NumbersReader   generates `rows` rows (id, name, amount) as pyarrow batches; incremental on id.
JsonLinesWriter appends batches to `<path>/part-<n>.jsonl`, exactly once: a commit writes the
                file under a temporary name with the state inside a sidecar, then renames both.

Use them by class path (`implementation: dativo_example_python.NumbersReader`) or, once the
package is pip-installed, by entry-point name (`reader: example_numbers`).
"""
import json
import os

import pyarrow as pa
import pyarrow.compute as pc

SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    pa.field("name", pa.string()),
    pa.field("amount", pa.float64()),
])


class NumbersReader:
    """The five methods of a dativo reader."""

    def initialize(self, config, context):
        if not isinstance(config, dict):
            raise TypeError("config must be a mapping like {rows: 1000}")
        unknown = set(config) - {"rows", "batch_size"}
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}; expected rows, batch_size")
        self.rows = int(config.get("rows", 1000))
        self.batch_size = int(config.get("batch_size", 10_000))
        state = context.get("state") or {}
        self.next_id = int(state.get("next_id", 1))
        self.started_with_state = bool(state)

    def get_schema(self):
        return SCHEMA

    def read_batch(self):
        if self.next_id > self.rows:
            return None  # end of stream
        end = min(self.next_id + self.batch_size, self.rows + 1)
        ids = pa.array(range(self.next_id, end), pa.int64())
        names = pa.array([None if i % 10 == 0 else f"name-{i}" for i in range(self.next_id, end)])
        amounts = pc.multiply(ids, 1.5)
        self.next_id = end
        return pa.record_batch([ids, names, amounts], schema=SCHEMA)

    def get_incremental_state(self):
        return {"next_id": self.next_id}

    def close(self):
        pass


class JsonLinesWriter:
    """The writer methods; committed_state makes re-runs exactly-once after a crash."""

    def initialize(self, config, context):
        if not isinstance(config, dict) or "path" not in config:
            raise ValueError("config needs `path`: the output directory")
        self.path = config["path"]
        os.makedirs(self.path, exist_ok=True)
        self.tmp = os.path.join(self.path, f".tmp-{context['run_id']}.jsonl")
        self.out = None
        self.rows = 0

    def write_batch(self, batch):
        if self.out is None:
            self.out = open(self.tmp, "w")
        for row in batch.to_pylist():
            self.out.write(json.dumps(row, default=str) + "\n")
        self.rows += batch.num_rows

    def _commits(self):
        return sorted(f for f in os.listdir(self.path) if f.startswith("part-") and f.endswith(".state"))

    def finalize(self, commit):
        n = len(self._commits()) + 1
        final = os.path.join(self.path, f"part-{n:06d}.jsonl")
        if self.out is None:
            self.out = open(self.tmp, "w")
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()
        self.out = None
        os.rename(self.tmp, final)
        # The state file is the commit point: without it, the data file does not count.
        state_tmp = final + ".state.tmp"
        with open(state_tmp, "w") as f:
            json.dump({"state": commit["state"], "run_id": commit["run_id"]}, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(state_tmp, os.path.join(self.path, f"part-{n:06d}.state"))
        rows, self.rows = self.rows, 0
        return {"files": [final], "rows": rows, "bytes": os.path.getsize(final)}

    def abort(self):
        if self.out is not None:
            self.out.close()
            self.out = None
        if os.path.exists(self.tmp):
            os.remove(self.tmp)
        self.rows = 0

    def close(self):
        self.abort()

    def committed_state(self):
        commits = self._commits()
        if not commits:
            return None
        with open(os.path.join(self.path, commits[-1])) as f:
            return json.load(f)
