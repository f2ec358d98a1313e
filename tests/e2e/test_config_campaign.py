"""Defects from the job-file test campaign: an alias bomb must not exhaust memory (validate, run,
serve), batch_size / channel_depth have upper bounds checked by `validate`, `validate` runs no
plugin code and a job may load native libraries only from its own directory, the plugin path or
an allowed directory, and "not a dativo plugin" has one exit code (5) everywhere."""
import os
import pathlib
import resource
import shutil
import subprocess
import time

import pytest

from conftest import BIN, ROOT, free_port, parquet_stats, write_job

MEMORY_LIMIT = 2 << 30  # the unfixed binary must fail inside this, not take the machine down

# 10 levels of 10 aliases: 10^10 strings once expanded, from under 500 bytes.
BOMB = "name: bomb\na: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [{','.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefghi", "bcdefghij"))

GOOD = """name: {name}
source:
  reader: file
  config: {{path: data.csv{extra}}}
target:
  writer: parquet
  config: {{path: lake}}
"""


def limited():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_limited(cwd, *args, env=None, timeout=60):
    """Run dativo with at most 2 GB of address space; a timeout counts as a failure."""
    e = dict(os.environ)
    e.pop("DATIVO_STATE_DIR", None)
    e.update(env or {})
    try:
        return subprocess.run([BIN, *map(str, args)], cwd=cwd, env=e, capture_output=True, text=True,
                              timeout=timeout, preexec_fn=limited)
    except subprocess.TimeoutExpired:
        pytest.fail(f"dativo {' '.join(map(str, args))} did not finish within {timeout}s")


# ---------------------------------------------------------------- 1. alias bomb, file size


@pytest.mark.parametrize("command", ["validate", "run"])
def test_alias_bomb_is_a_config_error(tmp_path, command):
    assert len(BOMB) < 500
    job = write_job(tmp_path / "bomb.yaml", BOMB)
    p = run_limited(tmp_path, command, job)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert f"{job}:" in p.stderr and "more than 100000 values" in p.stderr, p.stderr
    assert "panicked" not in p.stderr


def test_oversized_job_file_is_a_config_error(tmp_path):
    job = write_job(tmp_path / "big.yaml", GOOD.format(name="big", extra="") + "#" * (2 << 20) + "\n")
    p = run_limited(tmp_path, "validate", job)
    assert p.returncode == 2 and f"{job} is larger than 1048576 bytes" in p.stderr, p.stderr


def test_deep_nesting_is_a_config_error(tmp_path):
    job = write_job(tmp_path / "deep.yaml", "name: deep\nx: " + "[" * 250 + "]" * 250 + "\n")
    p = run_limited(tmp_path, "validate", job)
    assert p.returncode == 2 and f"{job}:" in p.stderr, p.stderr


def test_serve_survives_an_alias_bomb(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (tmp_path / "data.csv").write_text("id\n1\n")
    write_job(jobs / "good.yaml", GOOD.format(name="good", extra=""))
    port = free_port()
    env = dict(os.environ)
    env.pop("DATIVO_STATE_DIR", None)
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([BIN, "serve", "--jobs", jobs, "--listen", f"127.0.0.1:{port}"], cwd=tmp_path,
                            env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limited)
    try:
        import json
        import urllib.request

        def api():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs", timeout=5) as r:
                return json.loads(r.read())

        deadline = time.time() + 30
        while True:
            try:
                api()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.2)
        write_job(jobs / "bomb.yaml", BOMB)
        deadline = time.time() + 30
        invalid = []
        while not invalid:
            assert proc.poll() is None, "serve died: " + (tmp_path / "serve.log").read_text()[-2000:]
            assert time.time() < deadline, "the bomb was never reported"
            try:
                invalid = api()["invalid"]
            except OSError:
                pass
            time.sleep(0.3)
        assert invalid[0]["file"].endswith("bomb.yaml"), invalid
        assert "more than 100000 values" in invalid[0]["error"], invalid
        assert [j["name"] for j in api()["jobs"]] == ["good"]
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


# ---------------------------------------------------------------- 2. upper bounds


@pytest.mark.parametrize("job_text,key,allowed", [
    (GOOD.format(name="d", extra="") + "channel_depth: 100000000000\n", "channel_depth", "between 1 and 1024"),
    (GOOD.format(name="f", extra=", batch_size: 100000000000"), "source.config.batch_size",
     "between 1 and 1000000"),
    ("name: p\nsource: {reader: postgres, config: {url: 'postgres://u@127.0.0.1/db', table: t, "
     "batch_size: 100000000000}}\ntarget: {writer: parquet, config: {path: lake}}\n",
     "source.config.batch_size", "between 1 and 1000000"),
    ("name: m\nsource: {reader: mysql, config: {url: 'mysql://u@127.0.0.1/db', table: t, "
     "batch_size: 100000000000}}\ntarget: {writer: parquet, config: {path: lake}}\n",
     "source.config.batch_size", "between 1 and 1000000"),
    ("name: h\nsource: {reader: http, config: {url: 'http://127.0.0.1:9/x', batch_size: 100000000000}}\n"
     "target: {writer: parquet, config: {path: lake}}\n", "source.config.batch_size", "between 1 and 1000000"),
])
def test_batch_size_and_channel_depth_have_upper_bounds(tmp_path, job_text, key, allowed):
    (tmp_path / "data.csv").write_text("id\n1\n2\n")
    job = write_job(tmp_path / "job.yaml", job_text)
    for command in ["validate", "run"]:
        p = run_limited(tmp_path, command, job, *(["--no-progress"] if command == "run" else []))
        assert p.returncode == 2, (command, p.returncode, p.stderr[-2000:])
        assert f"{job}:" in p.stderr and f" {key}: must be {allowed}" in p.stderr, p.stderr
        assert "100000000000" in p.stderr and "panicked" not in p.stderr, p.stderr


def test_largest_allowed_values_run(tmp_path):
    (tmp_path / "data.csv").write_text("id\n1\n2\n")
    job = write_job(tmp_path / "job.yaml",
                    GOOD.format(name="max", extra=", batch_size: 1000000") + "channel_depth: 1024\n")
    p = run_limited(tmp_path, "run", job, "--no-progress")
    assert p.returncode == 0, p.stderr
    assert parquet_stats(tmp_path / "lake")[0] == 2


# ---------------------------------------------------------------- 3. plugin loading

MARKER_C = r"""
#include <stdio.h>
#include <stdlib.h>
/* Runs when the library is loaded: proves whether dativo loaded it. */
__attribute__((constructor)) static void dativo_test_marker(void) {
    const char *p = getenv("DATIVO_TEST_MARKER");
    if (p) { FILE *f = fopen(p, "a"); if (f) { fputs("loaded\n", f); fclose(f); } }
}
"""

SEQ_JOB = """name: marker_job
source:
  reader: {{type: custom, implementation: "{lib}#sequence"}}
  config: {{rows: 25}}
target:
  writer: parquet
  config: {{path: lake}}
"""


@pytest.fixture
def marker_lib(tmp_path):
    """A working dativo plugin (the C example reader) whose constructor writes a marker file."""
    src = tmp_path / "marker.c"
    src.write_text(MARKER_C)
    out = tmp_path / "lib" / "libmarker.so"
    out.parent.mkdir()
    subprocess.run(["gcc", "-std=c11", "-O1", "-fPIC", "-shared",
                    f"-I{ROOT / 'crates/dativo-plugin-sdk/include'}", "-o", str(out),
                    str(ROOT / "examples/plugins/c/sequence_reader.c"), str(src)], check=True, timeout=120)
    return out


def test_validate_loads_no_plugin_and_run_needs_an_allow(dativo, tmp_path, marker_lib):
    marker = tmp_path / "marker"
    env = {"DATIVO_TEST_MARKER": str(marker)}
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    job = write_job(jobs / "j.yaml", SEQ_JOB.format(lib="../lib/libmarker.so"))

    # validate: pure checks only. Outside the job's directory → refused, nothing loaded.
    p = dativo.run("validate", job, env=env)
    assert not marker.exists(), "validate ran the library's constructor"
    assert p.returncode == 2, p.stderr
    assert f"{job}:3: source.reader.implementation" in p.stderr and "--allow-plugin-path" in p.stderr, p.stderr
    p = dativo.run("validate", "--allow-plugin-path", tmp_path / "lib", job, env=env, check=0)
    assert not marker.exists(), "validate ran the library's constructor"
    assert "ok:" in p.stdout

    # run refuses the out-of-tree library without an allow, before loading it.
    p = dativo.run("run", job, "--no-progress", env=env)
    assert p.returncode == 2 and "outside the job file's directory" in p.stderr, p.stderr
    assert not marker.exists()
    assert not (jobs / "lake").exists() and not (tmp_path / "lake").exists()

    # ... and runs it with one (flag or environment).
    dativo.run("run", "--allow-plugin-path", tmp_path / "lib", job, "--no-progress", env=env, check=0)
    assert marker.exists()
    assert parquet_stats(tmp_path / "lake")[0] == 25
    shutil.rmtree(tmp_path / "lake")
    dativo.run("state", "reset", job, check=0)
    dativo.run("run", job, "--no-progress", env={**env, "DATIVO_ALLOW_PLUGIN_PATH": str(tmp_path / "lib")},
               check=0)
    assert parquet_stats(tmp_path / "lake")[0] == 25

    # validate --load loads (asked for explicitly).
    marker.unlink()
    dativo.run("validate", "--load", "--allow-plugin-path", tmp_path / "lib", job, env=env, check=0)
    assert marker.exists()


def test_libraries_in_the_job_dir_and_plugin_path_need_no_allow(dativo, tmp_path, marker_lib):
    jobs = tmp_path / "jobs"
    (jobs / "plugins").mkdir(parents=True)
    shutil.copy(marker_lib, jobs / "plugins" / "libmarker.so")
    job = write_job(jobs / "in_tree.yaml", SEQ_JOB.format(lib="./plugins/libmarker.so"))
    dativo.run("validate", job, check=0)
    dativo.run("run", job, "--no-progress", check=0)
    assert parquet_stats(tmp_path / "lake")[0] == 25

    # A symlink inside the job's directory to a library outside it is still outside.
    (jobs / "plugins" / "link.so").symlink_to(marker_lib)
    job = write_job(jobs / "link.yaml", SEQ_JOB.format(lib="./plugins/link.so"))
    p = dativo.run("validate", job)
    assert p.returncode == 2 and str(marker_lib) in p.stderr, p.stderr

    # An absolute path into DATIVO_PLUGIN_PATH, and a bare name found there.
    (tmp_path / "other").mkdir()
    for lib in [marker_lib, "marker"]:
        job = write_job(tmp_path / "other" / "j.yaml", SEQ_JOB.format(lib=lib))
        assert dativo.run("validate", job).returncode == 2
        dativo.run("validate", job, env={"DATIVO_PLUGIN_PATH": str(marker_lib.parent)}, check=0)

    # A directory given as the job file.
    p = dativo.run("validate", jobs)
    assert p.returncode == 2 and "not a regular file" in p.stderr, p.stderr


# ---------------------------------------------------------------- 4. one exit code


def test_not_a_dativo_plugin_exits_5_everywhere(dativo, tmp_path):
    libm = next(p for p in ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6",
                            "/lib64/libm.so.6", "/usr/lib64/libm.so.6"] if os.path.exists(p))
    shutil.copy(libm, tmp_path / "libm.so")
    job = write_job(tmp_path / "j.yaml", SEQ_JOB.format(lib="./libm.so"))
    codes = {}
    for args in [("run", job, "--no-progress"), ("validate", "--load", job), ("check", job)]:
        p = dativo.run(*args)
        assert "is not a dativo plugin" in p.stderr, (args, p.stderr)
        assert str(job) in p.stderr and "source.reader.implementation" in p.stderr, p.stderr
        codes[args[0]] = p.returncode
    assert codes == {"run": 5, "validate": 5, "check": 5}, codes
    # Without --load, validate does not open the library: only the path is checked.
    dativo.run("validate", job, check=0)
