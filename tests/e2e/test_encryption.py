"""Client-side encryption (the HIPAA writer): envelope encryption with per-file data keys,
the stream and Parquet-modular formats, the four key providers, the audit trail, and
`dativo decrypt` / `dativo verify` — checked against moto's S3 and KMS, and read back with
pyarrow's own Parquet decryption (`pyarrow.parquet.encryption`) and a KMS client."""
import base64
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import boto3
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
import pytest

from conftest import BIN, PG_URL, ROOT, write_csvs, write_job

ENDPOINT = os.environ.get("DATIVO_TEST_S3_ENDPOINT")
needs_moto = pytest.mark.skipif(not ENDPOINT, reason="needs DATIVO_TEST_S3_ENDPOINT (scripts/test starts moto)")
SECRET = "testing-secret-key-for-kms"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET}
HERE = pathlib.Path(__file__).parent


def aws(service):
    return boto3.client(service, endpoint_url=ENDPOINT, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key=SECRET)


def kms_key():
    return aws("kms").create_key(Description=f"dativo test {uuid.uuid4()}")["KeyMetadata"]["KeyId"]


def kms_provider(key_id):
    return f"""      key_provider:
        type: aws_kms
        key_id: {key_id}
        endpoint: {ENDPOINT}
        region: us-east-1
        access_key_id: "${{env:AWS_ACCESS_KEY_ID}}"
        secret_access_key: "${{env:AWS_SECRET_ACCESS_KEY}}\""""


def local_key(tmp_path, name="kek"):
    p = tmp_path / name
    p.write_text(os.urandom(32).hex())
    p.chmod(0o600)
    return p


class MotoKms(pe.KmsClient):
    """pyarrow's side of the interoperability test: unwraps what dativo's aws_kms provider
    wrapped, with plain boto3 calls to the same KMS."""

    def __init__(self, config):
        pe.KmsClient.__init__(self)
        self.kms = aws("kms")

    def wrap_key(self, key_bytes, master_key_identifier):
        blob = self.kms.encrypt(KeyId=master_key_identifier, Plaintext=key_bytes)["CiphertextBlob"]
        return base64.b64encode(blob).decode()

    def unwrap_key(self, wrapped_key, master_key_identifier):
        return self.kms.decrypt(KeyId=master_key_identifier,
                                CiphertextBlob=base64.b64decode(wrapped_key))["Plaintext"]


def pyarrow_decrypt(data: bytes) -> pa.Table:
    factory = pe.CryptoFactory(lambda config: MotoKms(config))
    props = factory.file_decryption_properties(pe.KmsConnectionConfig(), pe.DecryptionConfiguration())
    return pq.read_table(pa.BufferReader(data), decryption_properties=props)


def scan_for(marker: bytes, roots, since=None):
    """Every file under `roots` (modified after `since`, if given) that contains `marker`."""
    hits = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = os.path.join(dirpath, n)
                try:
                    if since is not None and os.stat(p).st_mtime < since:
                        continue
                    with open(p, "rb") as f:
                        if marker in f.read():
                            hits.append(p)
                except (OSError, PermissionError):
                    pass
    return hits


def decrypt_csv(dativo, job, env=None):
    """`dativo decrypt JOB` (CSV on stdout) as a table."""
    p = dativo.run("decrypt", job, env=env, check=0)
    return pacsv.read_csv(io.BytesIO(p.stdout.encode()))


def decrypt_parquet(dativo, tmp_path, job, env=None):
    """`dativo decrypt JOB -o FILE.parquet` (outside the scanned directory), as a table."""
    out = pathlib.Path(tempfile.mkdtemp(dir=tmp_path.parent)) / "out.parquet"
    dativo.run("decrypt", job, "-o", out, env=env, check=0)
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    t = pq.read_table(out)
    out.unlink()
    return t


# --- acceptance 1: the marker never reaches storage or a local temporary directory ----------

@needs_moto
@pytest.mark.parametrize("fmt", ["stream", "parquet"])
def test_marker_never_stored_on_s3_with_kms(dativo, tmp_path, pg, table, fmt):
    marker = f"PHI-MARKER-{uuid.uuid4().hex}"
    with pg.cursor() as c:
        c.execute(f"CREATE TABLE {table} (id int8 primary key, patient text, note text, amount numeric(10,2))")
        c.execute(f"INSERT INTO {table} SELECT i, 'patient-' || i, %s || '-' || i, i * 1.5 "
                  f"FROM generate_series(1, 30000) i", (marker,))
    s3 = aws("s3")
    bucket = f"phi-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    key = kms_key()
    work_tmp = tmp_path / "tmp"
    work_tmp.mkdir()
    j = write_job(tmp_path / "job.yaml", f"""name: phi_{fmt}
source:
  reader: postgres
  config:
    url: {PG_URL}
    table: {table}
    cursor: id
    batch_size: 4000
target:
  writer: parquet
  config:
    path: s3://{bucket}/phi/visits
    target_file_size: 200KB
    s3:
      endpoint: {ENDPOINT}
      region: us-east-1
      access_key_id: "${{env:AWS_ACCESS_KEY_ID}}"
      secret_access_key: "${{env:AWS_SECRET_ACCESS_KEY}}"
      path_style: true
    encryption:
      format: {fmt}
      segment_size: 64KB
{kms_provider(key)}
checkpoint: {{rows: 10000}}
""")
    started = time.time() - 1
    env = dict(KEYS, TMPDIR=str(work_tmp))
    r = dativo.run("run", j, "--no-progress", env=env, check=0)
    with pg.cursor() as c:
        c.execute(f"INSERT INTO {table} SELECT i, 'patient-' || i, %s || '-' || i, i * 1.5 "
                  f"FROM generate_series(30001, 35000) i", (marker,))
    r2 = dativo.run("run", j, "--no-progress", env=env, check=0)
    assert SECRET not in r.stdout + r.stderr + r2.stdout + r2.stderr

    # Every stored object: data files, commit manifests, staging — no marker, no plaintext PAR1
    # footer for the stream format.
    objects = s3.list_objects_v2(Bucket=bucket)["Contents"]
    data_files = [o["Key"] for o in objects if "/_dativo/" not in o["Key"]]
    assert len(data_files) >= 3, objects
    for o in objects:
        body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        assert marker.encode() not in body, o["Key"]
        assert b"patient-1" not in body, o["Key"]
    # Every local directory dativo wrote in (the job's working directory with its state and
    # audit log, its TMPDIR) and anything new in the system temporary directory.
    assert scan_for(marker.encode(), [tmp_path]) == []
    assert scan_for(marker.encode(), [tempfile.gettempdir()], since=started) == []
    # The audit trail is there and holds no plaintext key.
    audit = (tmp_path / ".dativo" / "audit.jsonl").read_text().splitlines()
    assert len(audit) == len(data_files)
    rec = json.loads(audit[0])
    assert rec["key_provider"] == "aws_kms" and rec["key"]["key_id"] == key
    assert rec["job"] == f"phi_{fmt}" and rec["rows"] > 0 and len(rec["ciphertext_sha256"]) == 64
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=[k for k in (o["Key"] for o in objects)
                                                           if "/_dativo/commits/" in k][0])["Body"].read())
    assert manifest["files"][0]["encryption"]["ciphertext_sha256"]

    # Decrypting gives back exactly the rows.
    v = dativo.run("verify", j, env=KEYS, check=0)
    assert "verified:" in v.stdout
    t = decrypt_parquet(dativo, tmp_path, j, env=KEYS)
    assert t.num_rows == 35000
    ids = sorted(t["id"].to_pylist())
    assert ids == list(range(1, 35001))
    assert t.filter(pa.compute.equal(t["id"], 7))["note"][0].as_py() == f"{marker}-7"

    if fmt == "parquet":
        # Interoperability: pyarrow's own Parquet decryption, with a KMS client, reads every file.
        total = 0
        for k in data_files:
            data = s3.get_object(Bucket=bucket, Key=k)["Body"].read()
            with pytest.raises(Exception):
                pq.read_table(pa.BufferReader(data))  # the footer is encrypted
            part = pyarrow_decrypt(data)
            assert set(part.column_names) == {"id", "patient", "note", "amount"}
            total += part.num_rows
        assert total == 35000


@needs_moto
@pytest.mark.parametrize("encode_threads", [1, 3])
def test_pyarrow_reads_per_column_keys(dativo, tmp_path, encode_threads):
    """Parquet Modular Encryption with a second KMS key for the sensitive columns: pyarrow's
    CryptoFactory reads the file, and the audit record names each column's key — also when
    the columns are encoded on several threads."""
    write_csvs(tmp_path / "data", 2, 3000)
    footer_key, pii_key = kms_key(), kms_key()
    j = enc_job(tmp_path, "pme_columns", f"""      format: parquet
      column_keys:
        {pii_key}: [name, amount]
{kms_provider(footer_key)}""")
    j.write_text(j.read_text().replace("    path: lake\n", f"    path: lake\n    encode_threads: {encode_threads}\n    row_group_size: 1000\n", 1))
    assert f"encode_threads: {encode_threads}" in j.read_text()
    dativo.run("run", j, "--no-progress", env=KEYS, check=0)
    files = sorted((tmp_path / "lake").glob("*.parquet"))
    assert files
    total = 0
    for f in files:
        t = pyarrow_decrypt(f.read_bytes())
        total += t.num_rows
        assert t.column_names == ["id", "name", "amount", "day"]
    assert total == 6000
    manifest = json.loads(sorted((tmp_path / "lake/_dativo/commits").glob("*.json"))[-1].read_text())
    rec = manifest["files"][0]["encryption"]
    assert rec["key"]["key_id"] == footer_key
    assert rec["column_keys"]["name"]["key_id"] == pii_key
    assert rec["column_keys"]["id"]["key_id"] == footer_key
    assert len({k["wrapped_key"] for k in rec["column_keys"].values()}) == 4  # a key per column
    dativo.run("verify", j, env=KEYS, check=0)


# --- acceptance 2: tampering and wrong keys --------------------------------------------------

def enc_job(tmp_path, name, encryption, checkpoint=""):
    """A job reading data/*.csv into an encrypted `lake` with `encryption` (YAML lines, indented
    under `encryption:`)."""
    return write_job(tmp_path / f"{name}.yaml", f"""name: {name}
source:
  reader: file
  config: {{path: "data/*.csv", batch_size: 1000}}
target:
  writer: parquet
  config:
    path: lake
    encryption:
{encryption}
{checkpoint}
""")


def local_job(tmp_path, fmt, key, name="tamper"):
    return enc_job(tmp_path, name, f"""      format: {fmt}
      segment_size: 8KB
      key_provider: {{type: local, key_file: {key.name}}}""", "checkpoint: {rows: 2000}")


@pytest.mark.parametrize("fmt", ["stream", "parquet"])
def test_tampering_is_detected(dativo, tmp_path, fmt):
    write_csvs(tmp_path / "data", 3, 2000)
    key = local_key(tmp_path)
    j = local_job(tmp_path, fmt, key)
    dativo.run("run", j, "--no-progress", check=0)
    lake = tmp_path / "lake"
    files = sorted(p for p in lake.iterdir() if p.is_file())
    assert len(files) == 3
    assert len([l for l in dativo.run("verify", j, check=0).stdout.splitlines() if l.startswith("ok ")]) == 3
    pristine = {f: f.read_bytes() for f in files}

    def restore():
        for f, b in pristine.items():
            f.write_bytes(b)

    def expect_failure(what, decrypt_too=True):
        v = dativo.run("verify", j)
        assert v.returncode == 4, (what, v.stdout, v.stderr)
        assert "FAILED" in v.stdout, what
        if not decrypt_too:
            return v.stdout
        d = dativo.run("decrypt", j, "-o", tmp_path / "out.parquet")
        assert d.returncode == 4, (what, d.stderr)
        assert not (tmp_path / "out.parquet").exists(), "a partial plaintext output was left"
        return v.stdout + d.stderr

    # One flipped byte in the middle of a file.
    b = bytearray(pristine[files[0]])
    b[len(b) // 2] ^= 0x01
    files[0].write_bytes(bytes(b))
    out = expect_failure("flipped byte")
    assert files[0].name in out
    restore()

    # Truncated by one segment / by a few bytes.
    for cut in (8 * 1024 + 16, 7):
        files[1].write_bytes(pristine[files[1]][:-cut])
        expect_failure(f"truncated by {cut}")
        restore()

    # Two files swapped.
    files[0].write_bytes(pristine[files[1]])
    files[1].write_bytes(pristine[files[0]])
    out = expect_failure("swapped")
    restore()

    # A stray file dropped into the dataset.
    (lake / "extra.parquet").write_bytes(pristine[files[0]])
    out = expect_failure("stray", decrypt_too=False)  # decrypt reads committed files only
    assert "not named by any commit" in out
    (lake / "extra.parquet").unlink()

    # Back to pristine: all good again, and the rows are exact.
    dativo.run("verify", j, check=0)
    t = decrypt_csv(dativo, j)
    assert sorted(t["id"].to_pylist()) == list(range(6000))

    # A wrong key: a clear error naming the key, exit 3, nothing decrypted.
    other = local_key(tmp_path, "other_kek")
    wrong = local_job(tmp_path, fmt, other, name="tamper")  # same job name, other key
    d = dativo.run("decrypt", wrong)
    assert d.returncode == 3, d.stderr
    assert "wrong key" in d.stderr and "fingerprint" in d.stderr
    assert d.stdout == ""


def test_audit_log_chain_is_checked(dativo, tmp_path):
    write_csvs(tmp_path / "data", 3, 2000)
    key = local_key(tmp_path)
    j = local_job(tmp_path, "stream", key, name="chain")
    dativo.run("run", j, "--no-progress", check=0)
    log = tmp_path / ".dativo" / "audit.jsonl"
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    pristine = log.read_text()
    lines = pristine.splitlines()
    assert len(lines) == 3
    kek_hex = key.read_text().strip()
    manifests = "".join(p.read_text() for p in (tmp_path / "lake/_dativo/commits").glob("*.json"))
    assert kek_hex not in pristine + manifests
    dativo.run("verify", j, check=0)

    # Rewrite history: the last line's row count (the chain cannot see it; the commit can).
    rec = json.loads(lines[-1])
    rec["rows"] += 1
    log.write_text("\n".join(lines[:-1] + [json.dumps(rec)]) + "\n")
    v = dativo.run("verify", j)
    assert v.returncode == 4 and "differs from the one committed" in v.stdout, v.stdout

    # Drop the first line: the chain breaks, and the file is missing from the log.
    log.write_text("\n".join(lines[1:]) + "\n")
    v = dativo.run("verify", j)
    assert v.returncode == 4 and "hash chain is broken" in v.stdout, v.stdout
    assert "missing from the audit log" in v.stdout

    log.write_text(pristine)
    dativo.run("verify", j, check=0)


# --- key providers ----------------------------------------------------------------------------

def test_key_file_readable_by_others_is_refused(dativo, tmp_path):
    write_csvs(tmp_path / "data", 1, 10)
    key = local_key(tmp_path)
    key.chmod(0o644)
    j = local_job(tmp_path, "stream", key, name="perm")
    r = dativo.run("run", j, "--no-progress")
    assert r.returncode == 2, r.stderr
    assert "chmod 600" in r.stdout and "encryption.key_provider.key_file" in r.stdout, r.stdout
    assert not (tmp_path / "lake").exists() or not list((tmp_path / "lake").glob("*.enc"))


def test_env_provider_and_missing_variable(dativo, tmp_path):
    write_csvs(tmp_path / "data", 2, 1000)
    kek = os.urandom(32).hex()
    j = enc_job(tmp_path, "envkey", "      key_provider: {type: env, var: TEST_DATIVO_KEK}")
    r = dativo.run("run", j, "--no-progress")
    assert r.returncode == 2 and "TEST_DATIVO_KEK" in r.stdout, r.stdout
    r = dativo.run("run", j, "--no-progress", env={"TEST_DATIVO_KEK": kek}, check=0)
    assert kek not in r.stdout + r.stderr
    t = decrypt_csv(dativo, j, env={"TEST_DATIVO_KEK": kek})
    assert sorted(t["id"].to_pylist()) == list(range(2000))


def test_command_provider_is_the_hsm_hook(dativo, tmp_path):
    write_csvs(tmp_path / "data", 2, 1500)
    hsm_key = tmp_path / "hsm.key"
    hsm_key.write_text(os.urandom(32).hex())
    j = enc_job(tmp_path, "hsm", f"""      format: parquet
      key_provider:
        type: command
        command: ["{sys.executable}", "{HERE / 'kek_command.py'}"]
        key_id: hsm-slot-1""")
    env = {"TEST_HSM_KEY_FILE": str(hsm_key)}
    dativo.run("run", j, "--no-progress", env=env, check=0)
    manifest = json.loads(sorted((tmp_path / "lake/_dativo/commits").glob("*.json"))[-1].read_text())
    assert manifest["files"][0]["encryption"]["key"]["wrapped_key"].startswith("hsm1:")
    dativo.run("verify", j, env=env, check=0)
    t = decrypt_csv(dativo, j, env=env)
    assert sorted(t["id"].to_pylist()) == list(range(3000))
    # The HSM refuses with another key: its message comes through, exit 3.
    hsm_key.write_text(os.urandom(32).hex())
    d = dativo.run("decrypt", j, env=env)
    assert d.returncode == 3 and "unwrap refused" in d.stderr, d.stderr


# --- exactly once still holds ----------------------------------------------------------------

def test_exactly_once_under_kills_with_encryption(dativo, tmp_path):
    total = write_csvs(tmp_path / "data", 30, 5000)
    key = local_key(tmp_path)
    j = local_job(tmp_path, "stream", key, name="kills")

    def exact():
        dativo.run("run", j, "--no-progress", check=0)
        v = dativo.run("verify", j, check=0)
        assert "verified:" in v.stdout
        ids = decrypt_csv(dativo, j)["id"].to_pylist()
        assert len(ids) == total and len(set(ids)) == total

    def finished():
        # Finished between kills: exact; start over to kill the next load.
        exact()
        shutil.rmtree(tmp_path / "lake")
        shutil.rmtree(tmp_path / ".dativo")
    kills = dativo.kill_loop(j, kills=3, rounds=60, seed=11, min_sleep=0.02, max_sleep=0.4,
                             finished=finished)
    assert kills >= 3
    exact()


# --- Iceberg ----------------------------------------------------------------------------------

@needs_moto
def test_iceberg_data_files_are_encrypted(dativo, tmp_path):
    from pyiceberg.catalog.sql import SqlCatalog
    marker = f"ICE-MARKER-{uuid.uuid4().hex}"
    (tmp_path / "data").mkdir()
    with open(tmp_path / "data" / "a.csv", "w") as f:
        f.write("id,secret\n")
        for i in range(5000):
            f.write(f"{i},{marker}-{i}\n")
    key = kms_key()
    j = write_job(tmp_path / "job.yaml", f"""name: ice_enc
source:
  reader: file
  config: {{path: "data/*.csv", batch_size: 1000}}
target:
  writer: iceberg
  config:
    table: phi.visits
    catalog: {{uri: "sqlite://{tmp_path}/catalog.db"}}
    warehouse: {tmp_path}/warehouse
    target_file_size: 20KB
    encryption:
      format: parquet
{kms_provider(key)}
checkpoint: {{rows: 2000}}
""")
    dativo.run("run", j, "--no-progress", env=KEYS, check=0)
    (tmp_path / "data" / "a.csv").unlink()  # the plaintext source; the scan covers the rest
    assert scan_for(marker.encode(), [tmp_path]) == []
    cat = SqlCatalog("dativo", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse")
    t = cat.load_table("phi.visits")
    snap = t.current_snapshot()
    recs = json.loads(snap.summary.additional_properties["dativo.encryption"])
    assert recs and recs[0]["key"]["key_id"] == key and recs[0]["format"] == "parquet"
    files = [task.file.file_path for task in t.scan().plan_files()]
    assert len(files) >= 3
    total = 0
    for f in files:
        data = pathlib.Path(f.removeprefix("file://")).read_bytes()
        part = pyarrow_decrypt(data)
        total += part.num_rows
    assert total == 5000
    v = dativo.run("verify", j, env=KEYS, check=0)
    assert "verified:" in v.stdout
    p = dativo.run("decrypt", j, env=KEYS, check=0)
    got = pacsv.read_csv(io.BytesIO(p.stdout.encode()))
    assert sorted(got["id"].to_pylist()) == list(range(5000))
    assert f"{marker}-42" in p.stdout


def test_the_documented_example_runs_as_written(dativo, tmp_path):
    """examples/jobs/encrypted_quickstart.yaml's header commands, verbatim (dativo = our binary)."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    header = (ROOT / "examples/jobs/encrypted_quickstart.yaml").read_text().split("\nname:")[0]
    cmds = [l.strip()[2:].strip() for l in header.splitlines() if l.startswith("#   ")]
    assert len(cmds) == 4, cmds
    out = []
    for c in cmds:
        c = c.split("  #")[0]
        if c.startswith("dativo "):
            c = BIN + c[len("dativo"):]
        p = subprocess.run(c, shell=True, cwd=tmp_path, capture_output=True, text=True)
        assert p.returncode == 0, (c, p.stdout, p.stderr)
        out.append(p.stdout)
    lake = tmp_path / "lake/encrypted/orders"
    encrypted = list(lake.glob("*.parquet.enc"))
    assert encrypted and not list(lake.glob("*.parquet"))
    assert f"verified: {len(encrypted)} file(s)" in out[2], out[2]
    assert out[3].startswith("order_id,customer_id,region"), out[3]
    t = decrypt_csv(dativo, "examples/jobs/encrypted_quickstart.yaml")
    assert t.num_rows == 12000


def test_a_plaintext_file_swapped_in_is_refused(dativo, tmp_path):
    """Parquet readers read a plaintext file without complaint even with decryption properties:
    dativo insists on the encrypted footer and the committed row count."""
    write_csvs(tmp_path / "data", 2, 1000)
    key = local_key(tmp_path)
    j = local_job(tmp_path, "parquet", key, name="swapin")
    dativo.run("run", j, "--no-progress", check=0)
    victim = sorted((tmp_path / "lake").glob("*.parquet"))[0]
    pq.write_table(pa.table({"id": [1, 2, 3], "name": ["x", "y", "z"], "amount": [1.0, 2.0, 3.0],
                             "day": ["a", "b", "c"]}), victim)
    d = dativo.run("decrypt", j)
    assert d.returncode == 4 and "encrypted footer" in d.stderr, d.stderr
    assert d.stdout == ""
    v = dativo.run("verify", j)
    assert v.returncode == 4 and victim.name in v.stdout


def test_column_keys_naming_a_missing_column_is_refused(dativo, tmp_path):
    write_csvs(tmp_path / "data", 1, 10)
    key = local_key(tmp_path)
    j = enc_job(tmp_path, "typo", f"""      format: parquet
      key_provider: {{type: local, key_file: {key.name}, key_id: main}}
      column_keys:
        main: [nmae]""")
    r = dativo.run("run", j, "--no-progress")
    assert r.returncode == 2, r.stdout
    assert "`nmae` is not a column" in r.stdout and "encryption.column_keys.main" in r.stdout, r.stdout
    assert not list((tmp_path / "lake").glob("*.parquet"))


@pytest.fixture
def authenticating_kms(tmp_path):
    """A moto server of its own that checks every request's Signature V4 (after the first four
    calls, which create an IAM user with a policy allowing KMS)."""
    from conftest import free_port, wait_for_port
    port = free_port()
    log = open(tmp_path / "moto-auth.log", "w")
    proc = subprocess.Popen([str(pathlib.Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="4"),
                            stdout=log, stderr=log)
    try:
        wait_for_port(port, 20)
        ep = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=ep, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="dativo")
        arn = iam.create_policy(PolicyName="kms", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}))["Policy"]["Arn"]
        iam.attach_user_policy(UserName="dativo", PolicyArn=arn)
        k = iam.create_access_key(UserName="dativo")["AccessKey"]
        kms = boto3.client("kms", endpoint_url=ep, region_name="us-east-1",
                           aws_access_key_id=k["AccessKeyId"], aws_secret_access_key=k["SecretAccessKey"])
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        yield ep, k["AccessKeyId"], k["SecretAccessKey"], key_id
    finally:
        proc.kill()
        proc.wait()


def test_kms_requests_are_signed_correctly(dativo, tmp_path, authenticating_kms):
    """Against a KMS that verifies Signature V4: the right secret works end to end, a wrong one
    is an authentication error (exit 3) that does not print the secret."""
    ep, akid, secret, key_id = authenticating_kms
    write_csvs(tmp_path / "data", 2, 500)
    j = enc_job(tmp_path, "sigv4", f"""      key_provider:
        type: aws_kms
        key_id: {key_id}
        endpoint: {ep}
        region: us-east-1
        access_key_id: {akid}
        secret_access_key: "${{env:KMS_SECRET}}\"""")
    r = dativo.run("run", j, "--no-progress", env={"KMS_SECRET": secret}, check=0)
    assert secret not in r.stdout + r.stderr
    dativo.run("verify", j, env={"KMS_SECRET": secret}, check=0)
    assert decrypt_csv(dativo, j, env={"KMS_SECRET": secret}).num_rows == 1000
    wrong = "W" * 40
    d = dativo.run("decrypt", j, env={"KMS_SECRET": wrong})
    assert d.returncode == 3, d.stderr
    assert "SignatureDoesNotMatch" in d.stderr or "signature" in d.stderr.lower(), d.stderr
    assert wrong not in d.stderr


def test_verify_and_decrypt_point_at_a_writer_that_does_not_encrypt(dativo, tmp_path):
    # The writer says whether it encrypts; the error points at `target.writer`, not into its config.
    j = write_job(tmp_path / "plain.yaml", """name: not_encrypted
source:
  reader: file
  config: {path: "in/*.csv"}
target:
  writer: adbc
  config: {driver: adbc_driver_sqlite, uri: "file:x.db", table: t}
""")
    for cmd in ("verify", "decrypt"):
        p = dativo.run(cmd, j)
        assert p.returncode == 2, p.stderr
        assert "target.writer" in p.stderr and "target.config.writer" not in p.stderr, p.stderr
        assert "only the parquet and iceberg writers encrypt" in p.stderr, p.stderr
