"""Bad job files: one line naming the file, the key path and the line; exit code 2."""
import re

import pytest

from conftest import write_job

GOOD = """name: j
source:
  reader: file
  config:
    path: data/*.csv
target:
  writer: parquet
  config:
    path: out
    compression: zstd
checkpoint:
  rows: 100
"""


def one_line_error(p):
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.mark.parametrize("edit,path,line,words", [
    (("checkpoint:", "checkpont:"), "checkpont", 11, "unknown field"),
    (("    path: data/*.csv", "    pathh: data/*.csv"), "source.config.pathh", 5, "unknown field"),
    (("  rows: 100", "  rows: lots"), "checkpoint.rows", 12, "invalid type"),
    (("    compression: zstd", "    compression: brotli9"), "target.config.compression", 10,
     "unknown compression"),
    (("  writer: parquet", "  writer: parqet"), "target.writer", 7, "unknown writer"),
    (("    path: out", "    path: ${env:DATIVO_TEST_UNSET_VAR}"), "target.config.path", 9,
     "DATIVO_TEST_UNSET_VAR"),
    (("name: j\n", ""), None, 1, "missing field `name`"),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_job_file(dativo, tmp_path, command, edit, path, line, words):
    job = write_job(tmp_path / "job.yaml", GOOD.replace(*edit))
    p = dativo.run(command, job, check=2)
    msg = one_line_error(p)
    assert str(job) in msg, msg
    assert f"{job}:{line}:" in msg, msg
    if path:
        assert f" {path}: " in msg, msg
    assert words in msg, msg


def test_broken_yaml_names_line(dativo, tmp_path):
    job = write_job(tmp_path / "job.yaml", GOOD.replace("  rows: 100", "  rows: [100"))
    msg = one_line_error(dativo.run("validate", job, check=2))
    assert re.search(r"job\.yaml:1[23]: invalid YAML", msg), msg


def test_substituted_secrets_never_printed(dativo, tmp_path):
    secret = "pa55-w0rd-do-not-print"
    job = write_job(tmp_path / "job.yaml",
                    GOOD.replace("compression: zstd", "compression: ${env:SECRET_COMPRESSION}"))
    for cmd in ["validate", "run"]:
        p = dativo.run(cmd, job, env={"SECRET_COMPRESSION": secret}, check=2)
        assert secret not in p.stdout + p.stderr
        assert "***" in p.stderr, p.stderr
    (tmp_path / "pw").write_text(secret + "\n")
    job = write_job(tmp_path / "job2.yaml", GOOD.replace("rows: 100", "rows: ${file:pw}"))
    p = dativo.run("validate", job, check=2)
    assert secret not in p.stdout + p.stderr
    assert "checkpoint.rows" in p.stderr
