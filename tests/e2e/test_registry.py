"""The plugin registry (issue 23): plugins made by `dativo plugin new` in C, Go, Rust and Python
are packaged, signed, published into an index served as static files (a directory, HTTP on
loopback, an S3 prefix on moto), searched, installed by name, pinned in dativo.lock and run in
jobs; every bad artifact is refused before anything is unpacked, and nothing is left behind.

Signatures are checked independently: the statement a publisher signs is rebuilt here and
verified (and forged for the bad cases) with pyca/cryptography's Ed25519, not dativo's code.
Rows are read back with duckdb."""
import base64
import functools
import hashlib
import http.server
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import threading
import uuid

import duckdb
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from conftest import BIN, ROOT, package_sdk_and_scaffold, rust_scaffold_build, write_job

S3_ENDPOINT = os.environ.get("DATIVO_TEST_S3_ENDPOINT")
PLATFORM = {"x86_64": "linux-x86_64", "aarch64": "linux-aarch64"}[os.uname().machine]
LANGS = ["c", "go", "rust", "python"]


def run(*args, env=None, cwd=None, check=0):
    e = dict(os.environ)
    e.pop("DATIVO_STATE_DIR", None)
    e.update(env or {})
    p = subprocess.run([BIN, *map(str, args)], cwd=cwd, env=e, capture_output=True, text=True,
                       timeout=900)
    if check is not None and p.returncode != check:
        raise AssertionError(f"dativo {' '.join(map(str, args))} exited {p.returncode}, expected "
                             f"{check}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def toolchain_env():
    return {"GOCACHE": os.environ.get("GOCACHE", "/tmp/dativo-go-cache"), "GOPROXY": "off",
            "GOFLAGS": "-mod=mod", "CARGO_TARGET_DIR": str(ROOT / "target"),
            "CARGO_PROFILE_RELEASE_DEBUG": "line-tables-only"}


def statement(publisher, e, name):
    """The signed text, rebuilt from the documented format (docs/registry.md)."""
    return ("dativo plugin signature v1\n"
            f"publisher {publisher}\nname {name}\nversion {e['version']}\nkind {e['kind']}\n"
            f"abi {e['abi'] if e.get('abi') is not None else '-'}\nplatform {e['platform']}\n"
            f"readers {','.join(e['readers'])}\nwriters {','.join(e['writers'])}\n"
            f"size {e['size']}\nsha256 {e['sha256']}\n").encode()


# An Ed25519 private key in PKCS#8 v2 (RFC 5958/8410, the form dativo writes): version 1, the
# algorithm 1.3.101.112, the 32-byte seed, then the public key ([1] IMPLICIT BIT STRING).
# Read by its fixed layout:
# pyca/cryptography's DER parser refuses v2 documents in some releases (50.x, the newest that
# msal allows beside it), and only the seed matters to sign.
_PKCS8_V2_ED25519 = bytes.fromhex("3051020101300506032b657004220420")


def secret_key(path):
    k = json.loads(path.read_text())
    der = base64.b64decode(k["pkcs8"])
    assert len(der) == 83 and der.startswith(_PKCS8_V2_ED25519) and der[48:51] == bytes.fromhex("812100"), \
        f"not an Ed25519 PKCS#8 v2 key: {der[:20].hex()}"
    key = Ed25519PrivateKey.from_private_bytes(der[16:48])
    # The public key stored beside the seed is the seed's.
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    assert key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == der[51:83]
    return key


def public_key(line):
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(line.split()[2]))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Four plugins, packaged, signed by publisher `acme` and published into one index."""
    base = tmp_path_factory.mktemp("registry")
    home = base / "home"
    env = {"DATIVO_HOME": str(home), **toolchain_env()}
    run("plugin", "keygen", "--publisher", "acme", "--out", base / "keys", env=env)
    projects = {}
    for lang in ["c", "go", "python"]:
        name = f"reg_{lang}"
        run("plugin", "new", "--lang", lang, name, cwd=base, env=env)
        projects[lang] = base / name
    built = rust_scaffold_build()
    if built:
        d, code, err = built
        assert code == 0, err
    else:  # this file alone: the scaffold against the packaged SDK, built by `plugin package`
        (base / "rs").mkdir()
        d = package_sdk_and_scaffold(base / "rs", "scaffold_rust_reader")
    shutil.copytree(d, base / "reg_rust")
    projects["rust"] = base / "reg_rust"
    index = base / "index"
    artifacts = {}
    for lang, d in projects.items():
        extra = ["--python", sys.executable] if lang == "python" else []
        p = run("plugin", "package", d, "--out", base / "dist" / lang, "--license", "Apache-2.0",
                "--description", f"the {lang} scaffold reader", *extra, env=env)
        assert "packaged" in p.stdout, p.stdout
        (art,) = (base / "dist" / lang).glob("*.tar.gz")
        run("plugin", "sign", art, "--key", base / "keys" / "acme.key", env=env)
        run("plugin", "publish", art, "--index", index, env=env)
        artifacts[lang] = art
    idx = json.loads((index / "index.json").read_text())
    names = {lang: next(n for n, p in idx["plugins"].items()
                        if any(v["url"].endswith(artifacts[lang].name) for v in p["versions"]))
             for lang in LANGS}
    return {"base": base, "home": home, "env": env, "index": index, "artifacts": artifacts,
            "names": names, "keys": base / "keys"}


def fresh_home(world, name):
    home = world["base"] / f"home-{name}-{uuid.uuid4().hex[:6]}"
    return home, {**world["env"], "DATIVO_HOME": str(home)}


def check_rows(lake, rows):
    con = duckdb.connect()
    n, distinct, bad = con.execute(
        f"SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE name IS NOT NULL AND name <> 'name-' || id) "
        f"FROM read_parquet('{lake}/**/*.parquet')").fetchone()
    assert (n, distinct, bad) == (rows, rows, 0)


def test_the_index_is_signed_as_documented(world):
    """Every published version verifies with the publisher's key under an Ed25519 we did not
    write, over the documented statement; the artifact hashes are the files' hashes."""
    idx = json.loads((world["index"] / "index.json").read_text())
    pub = (world["keys"] / "acme.pub").read_text().strip()
    assert idx["publishers"]["acme"] == [pub]
    assert set(idx["plugins"]) == set(world["names"].values())
    for lang, name in world["names"].items():
        p = idx["plugins"][name]
        assert p["publisher"] == "acme" and p["license"] == "Apache-2.0"
        (v,) = p["versions"]
        art = world["index"] / v["url"]
        data = art.read_bytes()
        assert v["sha256"] == hashlib.sha256(data).hexdigest() == hashlib.sha256(world["artifacts"][lang].read_bytes()).hexdigest()
        assert v["size"] == len(data)
        public_key(pub).verify(base64.b64decode(v["signature"]), statement("acme", v, name))
        assert v["kind"] == ("python" if lang == "python" else "native")
        assert v["platform"] == ("any" if lang == "python" else PLATFORM)
        assert v["readers"] == [name]  # every scaffold's reader is named after the project
        # The manifest inside says the same.
        with tarfile.open(art) as t:
            m = json.load(t.extractfile("dativo-plugin.json"))
            assert all(not i.issym() and not i.islnk() for i in t.getmembers())
        assert (m["name"], m["version"], m["readers"]) == (name, v["version"], v["readers"])


def test_search_info_install_and_run_every_language(world, tmp_path):
    home, env = fresh_home(world, "install")
    env["DATIVO_INDEX"] = str(world["index"])
    p = run("plugin", "search", "scaffold", env=env)
    for name in world["names"].values():
        assert name in p.stdout
    p = run("plugin", "info", world["names"]["go"], env=env)
    assert "not trusted" in p.stdout and "acme" in p.stdout
    # Untrusted: refused, nothing installed.
    p = run("plugin", "install", world["names"]["c"], env=env, cwd=tmp_path, check=3)
    assert "do not trust" in p.stderr and world["names"]["c"] in p.stderr and "0.1.0" in p.stderr
    assert not (home / "plugins" / world["names"]["c"]).exists()
    run("plugin", "trust", world["keys"] / "acme.pub", env=env)
    # The Python plugin goes into its own virtualenv (--python), which the bridge then uses;
    # pyarrow comes from the test environment through PYTHONPATH.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    py_env = {**env, "DATIVO_PYTHON_VENV": str(venv)}
    specs = [f"{world['names'][lang]}@^0.1" for lang in LANGS]
    p = run("plugin", "install", *specs, "--python", venv / "bin" / "python", env=py_env, cwd=tmp_path)
    assert p.stdout.count("installed plugin") == 4, p.stdout
    lock = json.loads((tmp_path / "dativo.lock").read_text())
    idx = json.loads((world["index"] / "index.json").read_text())
    assert {e["name"]: e["sha256"] for e in lock["plugins"]} == {
        n: idx["plugins"][n]["versions"][0]["sha256"] for n in world["names"].values()}
    assert all(e["requirement"] == "^0.1" for e in lock["plugins"])
    p = run("plugins", "list", "--installed", env=env)
    for name in world["names"].values():
        assert name in p.stdout
    assert "files changed" not in p.stdout
    # Each in a job, by name and requirement only.
    for lang in LANGS:
        name = world["names"][lang]
        lake = tmp_path / f"lake_{lang}"
        job = write_job(tmp_path / f"{lang}.yaml", f"""name: reg_{lang}
source:
  reader: {{type: custom, implementation: "registry:{name}@^0.1"}}
  config: {{rows: 1234}}
target:
  writer: parquet
  config: {{path: {lake}}}
""")
        run("run", job, "--no-progress", env={**py_env, "PYTHONPATH": os.pathsep.join(sys.path[1:])},
            cwd=tmp_path)
        check_rows(lake, 1234)
    # The Python plugin's package must be the installed version in the bridge's environment.
    subprocess.run([venv / "bin" / "python", "-m", "pip", "uninstall", "-q", "-y", world["names"]["python"]],
                   check=True)
    p = run("run", tmp_path / "python.yaml", "--no-progress",
            env={**py_env, "PYTHONPATH": os.pathsep.join(sys.path[1:])}, cwd=tmp_path, check=2)
    assert "does not hold it" in p.stderr and str(venv) in p.stderr
    # A file changed after installation is refused before it is loaded.
    c_dir = home / "plugins" / world["names"]["c"] / "0.1.0"
    lib = next(c_dir.glob("*.so"))
    lib.write_bytes(lib.read_bytes() + b"\0")
    p = run("run", tmp_path / "c.yaml", "--no-progress", env=env, cwd=tmp_path, check=2)
    assert "changed after installation" in p.stderr and lib.name in p.stderr


def test_locked_install_reproduces_the_same_files_elsewhere(world, tmp_path):
    home1, env1 = fresh_home(world, "one")
    env1["DATIVO_TRUSTED_KEYS"] = str(world["keys"] / "acme.pub")
    native = [world["names"][lang] for lang in ["c", "go", "rust"]]
    proj1 = tmp_path / "proj1"
    proj1.mkdir()
    run("plugin", "install", *native, "--index", world["index"], env=env1, cwd=proj1)
    # A second machine: another home, the lock copied, nothing else.
    home2, env2 = fresh_home(world, "two")
    env2["DATIVO_TRUSTED_KEYS"] = str(world["keys"] / "acme.pub")
    proj2 = tmp_path / "proj2"
    (proj2 / "jobs").mkdir(parents=True)
    shutil.copy(proj1 / "dativo.lock", proj2 / "dativo.lock")
    p = run("plugin", "install", "--locked", env=env2, cwd=proj2)
    assert "3 plugin(s) installed" in p.stdout

    def tree(home):
        root = home / "plugins"
        return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
                for f in sorted(root.rglob("*")) if f.is_file() and ".staging" not in f.parts
                and f.name != ".lock"}
    t1, t2 = tree(home1), tree(home2)
    assert t1 == t2 and len(t1) >= 9
    # The lock beside (above) the job picks the version: a job in jobs/ finds ../dativo.lock.
    name = world["names"]["go"]
    job = write_job(proj2 / "jobs" / "go.yaml", f"""name: locked_go
source:
  reader: {{type: custom, implementation: "registry:{name}"}}
  config: {{rows: 777}}
target:
  writer: parquet
  config: {{path: {proj2 / 'lake'}}}
""")
    run("run", job, "--no-progress", env=env2, cwd=tmp_path)
    check_rows(proj2 / "lake", 777)
    # A lock naming a version the job's requirement excludes is an error, not a silent pick.
    job2 = write_job(proj2 / "jobs" / "go2.yaml", (proj2 / "jobs" / "go.yaml").read_text()
                     .replace(f"registry:{name}", f"registry:{name}@^2").replace("locked_go", "locked_go2"))
    p = run("run", job2, "--no-progress", env=env2, cwd=tmp_path, check=2)
    assert "pins plugin" in p.stderr and "^2" in p.stderr
    # deploy plugins: a build context with exactly the locked, verified files; a pod-like home
    # made from it runs the job offline.
    ctx = tmp_path / "ctx"
    # A file planted beside an installation (not in its record) is not shipped.
    planted = home2 / "plugins" / name / "0.1.0" / "planted.sh"
    planted.write_text("echo not verified\n")
    run("deploy", "plugins", "--lock", proj2 / "dativo.lock", "--out", ctx, env=env2)
    assert not (ctx / "plugins" / name / "0.1.0" / "planted.sh").exists()
    planted.unlink()
    assert "COPY plugins/ /plugins/" in (ctx / "Dockerfile").read_text()
    pod_home = tmp_path / "pod"
    shutil.copytree(ctx / "plugins", pod_home / "plugins")
    assert tree(pod_home) == {k: v for k, v in t2.items()} | {
        "dativo.lock": hashlib.sha256((proj2 / "dativo.lock").read_bytes()).hexdigest()}
    run("run", job, "--no-progress", cwd=tmp_path,
        env={"DATIVO_HOME": str(pod_home), "DATIVO_LOCK": str(pod_home / "plugins" / "dativo.lock")})
    # deploy kubernetes --plugins-image points the pods there.
    out = run("deploy", "kubernetes", job, "--image", "x", "--plugins-image", "p:1").stdout
    assert "DATIVO_HOME" in out and "/opt/dativo/plugins/dativo.lock" in out


def serve_http(directory):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_index_over_http_and_s3(world, tmp_path):
    name = world["names"]["c"]
    srv = serve_http(world["index"])
    try:
        home, env = fresh_home(world, "http")
        env["DATIVO_TRUSTED_KEYS"] = str(world["keys"] / "acme.pub")
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        p = run("plugin", "search", "c scaffold", "--index", url, env=env)
        assert name in p.stdout
        run("plugin", "install", name, "--index", url, env=env, cwd=tmp_path)
        assert (home / "plugins" / name / "0.1.0" / "dativo-plugin.json").is_file()
        lock = json.loads((tmp_path / "dativo.lock").read_text())
        assert lock["plugins"][0]["index"] == url
        p = run("plugin", "install", "nope", "--index", url + "/missing", env=env, cwd=tmp_path, check=2)
        assert "404" in p.stderr
        # Credentials in an index URL would end up in dativo.lock: refused, and not echoed.
        secret_url = url.replace("http://", "http://user:s3cr3t-pw@")
        p = run("plugin", "search", "x", "--index", secret_url, env=env, check=2)
        assert "credentials in an index URL" in p.stderr and "s3cr3t-pw" not in p.stderr
    finally:
        srv.shutdown()
    if not S3_ENDPOINT:
        pytest.skip("needs DATIVO_TEST_S3_ENDPOINT (scripts/test starts moto)")
    import boto3
    s3 = boto3.client("s3", endpoint_url=S3_ENDPOINT, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"plugins-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    for f in world["index"].rglob("*"):
        if f.is_file():
            s3.upload_file(str(f), bucket, "idx/" + str(f.relative_to(world["index"])))
    home, env = fresh_home(world, "s3")
    env.update({"DATIVO_TRUSTED_KEYS": str(world["keys"] / "acme.pub"), "AWS_ENDPOINT_URL": S3_ENDPOINT,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"})
    d = tmp_path / "s3proj"
    d.mkdir()
    run("plugin", "install", name, "--index", f"s3://{bucket}/idx", env=env, cwd=d)
    job = write_job(d / "j.yaml", f"""name: s3_installed
source:
  reader: {{type: custom, implementation: "registry:{name}@0.1"}}
  config: {{rows: 50}}
target:
  writer: parquet
  config: {{path: {d / 'lake'}}}
""")
    run("run", job, "--no-progress", env=env, cwd=d)
    check_rows(d / "lake", 50)


def copy_index(world, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(world["index"], idx)
    return idx, json.loads((idx / "index.json").read_text())


def put_artifact(world, idx, data, name, version, platform=PLATFORM, readers=None, abi=1, kind="native",
                 sign=True):
    """Add a version to a copied index, signed with acme's key by pyca/cryptography."""
    index = json.loads((idx / "index.json").read_text())
    rel = f"artifacts/{name}/{version}/{name}-{version}-{uuid.uuid4().hex[:6]}.tar.gz"
    (idx / rel).parent.mkdir(parents=True, exist_ok=True)
    (idx / rel).write_bytes(data)
    pub = (world["keys"] / "acme.pub").read_text().strip()
    key_id = hashlib.sha256(base64.b64decode(pub.split()[2])).hexdigest()[:16]
    e = {"version": version, "kind": kind, "abi": abi, "platform": platform,
         "readers": readers or [name], "writers": [], "url": rel, "size": len(data),
         "sha256": hashlib.sha256(data).hexdigest(), "key": key_id, "signature": "", "yanked": False}
    if sign:
        e["signature"] = base64.b64encode(secret_key(world["keys"] / "acme.key").sign(statement("acme", e, name))).decode()
    p = index["plugins"].setdefault(name, {"publisher": "acme", "versions": []})
    p["versions"] = [v for v in p["versions"] if not (v["version"] == version and v["platform"] == platform)] + [e]
    (idx / "index.json").write_text(json.dumps(index))
    return e


def tar_gz(entries):
    """entries: (name, bytes | None for a symlink, extra TarInfo attrs)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as t:
        for name, data, attrs in entries:
            ti = tarfile.TarInfo(name)
            for k, v in attrs.items():
                setattr(ti, k, v)
            if data is None:
                t.addfile(ti)
            else:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def manifest(name, version="9.0.0"):
    return json.dumps({"format": 1, "name": name, "version": version, "kind": "native", "abi": 1,
                       "platform": PLATFORM, "readers": [name], "writers": [],
                       "library": "libx.so"}).encode()


def lying_header(name):
    """A tar whose single entry claims 600 MiB (and holds none of it)."""
    ti = tarfile.TarInfo(name)
    ti.size = 600 << 20
    raw = ti.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024
    buf = io.BytesIO()
    import gzip
    with gzip.GzipFile(fileobj=buf, mode="wb") as g:
        g.write(raw)
    return buf.getvalue()


BAD_ARCHIVES = {
    "dotdot": ([("dativo-plugin.json", None, {}), ("../evil", b"x", {})], "leaves the directory"),
    "absolute": ([("/tmp/evil-abs", b"x", {})], "absolute"),
    "symlink": ([("libx.so", None, {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"})], "is a link"),
    "hardlink": ([("libx.so", None, {"type": tarfile.LNKTYPE, "linkname": "dativo-plugin.json"})], "is a link"),
    "device": ([("dev", None, {"type": tarfile.CHRTYPE})], "not a regular file"),
    "record": ([("dativo-plugin.json", None, {}), (".dativo-install.json", b"{}", {})], "install record"),
    "file-then-dir": ([("dativo-plugin.json", None, {}), ("a", b"x", {}), ("a/b", b"y", {})], "conflicts"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHIVES) + ["oversize", "no-manifest", "duplicate"])
def test_unsafe_archives_are_refused_and_leave_nothing(world, tmp_path, case):
    idx, _ = copy_index(world, tmp_path)
    name = "evil-" + case
    if case == "oversize":
        data, why = lying_header("libx.so"), "bytes (at most"
    elif case == "no-manifest":
        data, why = tar_gz([("libx.so", b"\x7fELF", {})]), "no dativo-plugin.json"
    elif case == "duplicate":
        data, why = tar_gz([("dativo-plugin.json", manifest(name), {}), ("libx.so", b"a", {}),
                            ("libx.so", b"b", {})]), "appears twice"
    else:
        entries, why = BAD_ARCHIVES[case]
        entries = [(n, manifest(name) if (d is None and n == "dativo-plugin.json") else d, a) for n, d, a in entries]
        data = tar_gz(entries)
    put_artifact(world, idx, data, name, "9.0.0")
    home, env = fresh_home(world, case)
    env["DATIVO_TRUSTED_KEYS"] = str(world["keys"] / "acme.pub")
    p = run("plugin", "install", name, "--index", idx, env=env, cwd=tmp_path, check=3)
    assert name in p.stderr and "9.0.0" in p.stderr and "refused archive" in p.stderr and why in p.stderr, p.stderr
    assert not (home / "plugins" / name).exists()
    assert not list((home / "plugins" / ".staging").glob("*")), "a staging directory was left behind"
    assert not (tmp_path / "evil").exists() and not (home / "plugins" / "evil").exists()
    assert not os.path.exists("/tmp/evil-abs")
    assert not (tmp_path / "dativo.lock").exists()


def test_bad_versions_are_refused_with_plugin_version_and_reason(world, tmp_path):
    name = world["names"]["c"]
    good = world["artifacts"]["c"].read_bytes()
    pub = str(world["keys"] / "acme.pub")

    def attempt(idx, spec, code, *words, trusted=True):
        home, env = fresh_home(world, "bad")
        if trusted:
            env["DATIVO_TRUSTED_KEYS"] = pub
        d = tmp_path / uuid.uuid4().hex[:6]
        d.mkdir()
        p = run("plugin", "install", spec, "--index", idx, env=env, cwd=d, check=code)
        for w in words:
            assert w in p.stderr, (w, p.stderr)
        assert not (home / "plugins" / spec.split("@")[0]).exists()
        assert not (d / "dativo.lock").exists()
        return p

    idx, _ = copy_index(world, tmp_path / "a")
    # Hash mismatch: the bytes differ from the signed hash (same size).
    e = put_artifact(world, idx, good, name, "0.2.0")
    art = idx / e["url"]
    b = bytearray(art.read_bytes())
    b[len(b) // 2] ^= 0xFF
    art.write_bytes(bytes(b))
    attempt(idx, f"{name}@=0.2.0", 3, name, "0.2.0", "sha256")
    # Signature over other fields: the index claims another reader list.
    idx, _ = copy_index(world, tmp_path / "b")
    put_artifact(world, idx, good, name, "0.3.0")
    index = json.loads((idx / "index.json").read_text())
    v = next(v for v in index["plugins"][name]["versions"] if v["version"] == "0.3.0")
    v["readers"] = [name, "extra"]
    (idx / "index.json").write_text(json.dumps(index))
    attempt(idx, f"{name}@=0.3.0", 3, name, "0.3.0", "does not verify")
    # Unsigned in the index, and untrusted.
    idx, _ = copy_index(world, tmp_path / "c")
    put_artifact(world, idx, good, name, "0.4.0", sign=False)
    attempt(idx, f"{name}@=0.4.0", 3, name, "0.4.0", "unsigned")
    attempt(world["index"], name, 3, name, "0.1.0", "do not trust", trusted=False)
    # Wrong ABI, wrong platform.
    idx, _ = copy_index(world, tmp_path / "d")
    put_artifact(world, idx, good, name, "0.5.0", abi=99)
    attempt(idx, f"{name}@=0.5.0", 2, name, "0.5.0", "ABI 99")
    put_artifact(world, idx, good, name, "0.6.0", platform="macos-aarch64")
    attempt(idx, f"{name}@=0.6.0", 2, name, "0.6.0", "macos-aarch64", PLATFORM)
    # A range skips versions for another ABI or platform and takes the newest that fits.
    home, env = fresh_home(world, "fits")
    env["DATIVO_TRUSTED_KEYS"] = pub
    d = tmp_path / "fits"
    d.mkdir()
    p = run("plugin", "install", f"{name}@>=0.1", "--index", idx, env=env, cwd=d)
    assert f"installed plugin {name} 0.1.0" in p.stdout, p.stdout
    # The artifact's manifest differs from what was signed (a 0.1.0 artifact signed as 0.7.0).
    idx, _ = copy_index(world, tmp_path / "e")
    put_artifact(world, idx, good, name, "0.7.0")
    attempt(idx, f"{name}@=0.7.0", 3, name, "0.7.0", "not what was signed")
    # Yanked: refused; the newest unyanked version is chosen when one matches.
    idx, _ = copy_index(world, tmp_path / "f")
    put_artifact(world, idx, revision(world["artifacts"]["c"], "0.1.1"), name, "0.1.1")
    run("plugin", "yank", f"{name}@0.1.1", "--index", idx)
    attempt(idx, f"{name}@=0.1.1", 2, name, "0.1.1", "yanked")
    home, env = fresh_home(world, "unyanked")
    env["DATIVO_TRUSTED_KEYS"] = pub
    d = tmp_path / "unyanked"
    d.mkdir()
    p = run("plugin", "install", f"{name}@^0.1", "--index", idx, env=env, cwd=d)
    assert f"installed plugin {name} 0.1.0" in p.stdout, p.stdout
    run("plugin", "yank", f"{name}@0.1.0", "--index", idx)
    attempt(idx, f"{name}@^0.1", 2, name, "0.1.1", "yanked")
    # Unknown plugin.
    attempt(world["index"], "no-such-plugin", 2, "no-such-plugin", "plugin search")


def test_an_index_that_moves_a_version_to_other_bytes_is_refused(world, tmp_path):
    name = world["names"]["c"]
    home, env = fresh_home(world, "moved")
    env["DATIVO_TRUSTED_KEYS"] = str(world["keys"] / "acme.pub")
    run("plugin", "install", name, "--index", world["index"], env=env, cwd=tmp_path)
    before = {f: f.read_bytes() for f in (home / "plugins" / name).rglob("*") if f.is_file()}
    # Same version, other (validly signed) bytes: the Go artifact's bytes renamed would fail the
    # manifest check, so re-package the C plugin's files with another mtime instead.
    idx, _ = copy_index(world, tmp_path / "m")
    with tarfile.open(world["artifacts"]["c"]) as t:
        entries = [(m.name, t.extractfile(m).read(), {"mode": m.mode, "mtime": 12345}) for m in t.getmembers()]
    put_artifact(world, idx, tar_gz(entries), name, "0.1.0")
    p = run("plugin", "install", name, "--index", idx, env=env, cwd=tmp_path, check=3)
    assert name in p.stderr and "0.1.0" in p.stderr and "must never change" in p.stderr
    # Without a lock, this machine remembers the bytes it installed.
    nolock = tmp_path / "nolock"
    nolock.mkdir()
    p = run("plugin", "install", name, "--index", idx, env=env, cwd=nolock, check=3)
    assert "an earlier install on this machine" in p.stderr and "must never change" in p.stderr
    # A fresh home: the lock still catches it.
    home2, env2 = fresh_home(world, "moved2")
    env2["DATIVO_TRUSTED_KEYS"] = env["DATIVO_TRUSTED_KEYS"]
    p = run("plugin", "install", "--locked", "--index", idx, env=env2, cwd=tmp_path, check=3)
    assert "dativo.lock" in p.stderr and "must never change" in p.stderr
    assert not (home2 / "plugins" / name).exists()
    # Nothing was touched in the first home.
    assert before == {f: f.read_bytes() for f in (home / "plugins" / name).rglob("*") if f.is_file()}
    # Publishing other (signed) bytes under a published version is refused at the source too.
    other = tmp_path / "other" / world["artifacts"]["c"].name
    other.parent.mkdir()
    other.write_bytes(tar_gz(entries))
    run("plugin", "sign", other, "--key", world["keys"] / "acme.key")
    idx2, _ = copy_index(world, tmp_path / "m2")
    p = run("plugin", "publish", other, "--index", idx2, check=2)
    assert "never change" in p.stderr and name in p.stderr and "0.1.0" in p.stderr
    # Unsigned artifacts are not published.
    unsigned = tmp_path / world["artifacts"]["c"].name
    shutil.copy(world["artifacts"]["c"], unsigned)
    p = run("plugin", "publish", unsigned, "--index", idx, check=3)
    assert "unsigned" in p.stderr


def revision(artifact, version):
    """The artifact's files with its manifest saying `version` (a new release, same code)."""
    with tarfile.open(artifact) as t:
        entries = []
        for m in t.getmembers():
            data = t.extractfile(m).read()
            if m.name == "dativo-plugin.json":
                j = json.loads(data)
                j["version"] = version
                data = json.dumps(j).encode()
            entries.append((m.name, data, {"mode": m.mode}))
    return tar_gz(entries)


def test_lock_files_are_data(world, tmp_path):
    """A lock naming paths outside the plugins directory, or another platform, is refused."""
    name = world["names"]["c"]
    home, env = fresh_home(world, "lockdata")
    env["DATIVO_TRUSTED_KEYS"] = str(world["keys"] / "acme.pub")
    run("plugin", "install", name, "--index", world["index"], env=env, cwd=tmp_path)
    good = json.loads((tmp_path / "dativo.lock").read_text())
    for field, value, why in [("version", "../../../etc", "not semver"), ("name", "../x", "not a valid"),
                              ("sha256", "abc", "not a SHA-256")]:
        bad = json.loads(json.dumps(good))
        bad["plugins"][0][field] = value
        lock = tmp_path / f"bad-{field}.lock"
        lock.write_text(json.dumps(bad))
        p = run("plugin", "install", "--locked", "--lock", lock, env=env, cwd=tmp_path, check=2)
        assert why in p.stderr, p.stderr
        p = run("deploy", "plugins", "--lock", lock, "--out", tmp_path / f"ctx-{field}", env=env, check=2)
        assert why in p.stderr, p.stderr
    other = json.loads(json.dumps(good))
    other["plugins"][0]["platform"] = "macos-aarch64"
    (tmp_path / "mac.lock").write_text(json.dumps(other))
    p = run("plugin", "install", "--locked", "--lock", tmp_path / "mac.lock", env=env, cwd=tmp_path, check=2)
    assert "macos-aarch64" in p.stderr and "per platform" in p.stderr
    # A job under a lock that does not list the plugin it names is refused.
    (tmp_path / "jobs").mkdir()
    (tmp_path / "empty.lock").write_text('{"version": 1, "plugins": []}')
    job = write_job(tmp_path / "jobs" / "j.yaml", f"""name: unlocked
source:
  reader: {{type: custom, implementation: "registry:{name}"}}
target:
  writer: parquet
  config: {{path: {tmp_path / 'lake'}}}
""")
    p = run("run", job, "--no-progress", env={**env, "DATIVO_LOCK": str(tmp_path / "empty.lock")},
            cwd=tmp_path, check=2)
    assert "not pinned by" in p.stderr and name in p.stderr


def test_verify_uninstall_and_update(world, tmp_path):
    name = world["names"]["c"]
    home, env = fresh_home(world, "upd")
    art = world["artifacts"]["c"]
    p = run("plugin", "verify", art, env=env, check=3)
    assert "do not trust" in p.stderr
    env["DATIVO_TRUSTED_KEYS"] = str(world["keys"] / "acme.pub")
    p = run("plugin", "verify", art, env=env)
    assert p.stdout.startswith("ok:") and name in p.stdout
    run("plugin", "install", f"{name}@^0.1", "--index", world["index"], env=env, cwd=tmp_path)
    # A newer version appears (0.1.5, signed): update moves the lock and installs it.
    idx, _ = copy_index(world, tmp_path / "u")
    put_artifact(world, idx, revision(art, "0.1.5"), name, "0.1.5")
    p = run("plugin", "update", "--index", idx, env=env, cwd=tmp_path)
    assert "0.1.0 -> 0.1.5" in p.stdout
    lock = json.loads((tmp_path / "dativo.lock").read_text())
    assert lock["plugins"][0]["version"] == "0.1.5"
    p = run("plugins", "list", "--installed", env=env)
    assert "0.1.5" in p.stdout and "0.1.0" in p.stdout
    run("plugin", "uninstall", f"{name}@0.1.0", env=env, cwd=tmp_path)
    assert not (home / "plugins" / name / "0.1.0").exists() and (home / "plugins" / name / "0.1.5").exists()
    assert json.loads((tmp_path / "dativo.lock").read_text())["plugins"][0]["version"] == "0.1.5"
    run("plugin", "uninstall", name, env=env, cwd=tmp_path)
    assert not (home / "plugins" / name).exists()
    assert json.loads((tmp_path / "dativo.lock").read_text())["plugins"] == []


def test_a_flight_server_plugin_is_packaged_installed_and_started_by_the_job(world, tmp_path):
    """Kind flight: the artifact carries the server; the job starts the manifest's command on a
    free loopback port and reads over Arrow Flight."""
    proj = tmp_path / "flight"
    proj.mkdir()
    server = proj / "reader_server.py"
    shutil.copy(ROOT / "examples" / "plugins" / "flight" / "reader_server.py", server)
    server.chmod(0o755)
    (proj / "dativo-plugin.json").write_text(json.dumps({
        "format": 1, "name": "reg-flight", "version": "1.0.0", "kind": "flight", "platform": "any",
        "readers": ["orders"], "writers": [], "description": "a pyarrow.flight reader",
        "command": ["./reader_server.py", "--port", "{port}"]}))
    # A command that does not take {port} cannot be reached: refused when packaging.
    m = json.loads((proj / "dativo-plugin.json").read_text())
    (proj / "dativo-plugin.json").write_text(json.dumps({**m, "command": ["./reader_server.py"]}))
    p = run("plugin", "package", proj, "--out", tmp_path / "dist", check=2)
    assert "{port}" in p.stderr
    (proj / "dativo-plugin.json").write_text(json.dumps(m))
    run("plugin", "package", proj, "--out", tmp_path / "dist")
    (art,) = (tmp_path / "dist").glob("*.tar.gz")
    assert art.name == "reg-flight-1.0.0-any.tar.gz"
    run("plugin", "sign", art, "--key", world["keys"] / "acme.key")
    idx, _ = copy_index(world, tmp_path)
    run("plugin", "publish", art, "--index", idx)
    home, env = fresh_home(world, "flight")
    env["DATIVO_TRUSTED_KEYS"] = str(world["keys"] / "acme.pub")
    # The server's `#!/usr/bin/env python3` finds pyarrow in the test environment.
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    run("plugin", "install", "reg-flight@^1", "--index", idx, env=env, cwd=tmp_path)
    installed = home / "plugins" / "reg-flight" / "1.0.0" / "reader_server.py"
    assert installed.stat().st_mode & 0o111, "the server lost its executable bit"
    job = write_job(tmp_path / "f.yaml", f"""name: reg_flight
source:
  reader: {{type: custom, implementation: "registry:reg-flight@^1#orders"}}
  config: {{rows: 2500, batch_size: 400}}
target:
  writer: parquet
  config: {{path: {tmp_path / 'lake'}}}
""")
    run("run", job, "--no-progress", env=env, cwd=tmp_path)
    check_rows(tmp_path / "lake", 2500)
    # A job may not bring its own command for a registry plugin.
    bad = write_job(tmp_path / "g.yaml", (tmp_path / "f.yaml").read_text().replace(
        '#orders"}', '#orders", command: ["sh", "-c", "true"]}'))
    p = run("validate", bad, env=env, cwd=tmp_path, check=2)
    assert "command" in p.stderr and "registry" in p.stderr
