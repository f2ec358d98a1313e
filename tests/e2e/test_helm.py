"""The Helm chart (charts/dativo) and `dativo deploy kubernetes`' ServiceAccount, PodDisruptionBudget
and plugin libraries (issue 22, item 4): rendered by helm itself, validated against the
Kubernetes 1.31 schemas by kubernetes-validate, and the rendered job files and serve arguments
run by the dativo binary."""
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import BIN, PG_URL, ROOT, free_port, wait_for_port

HELM = Path(sys.executable).parent / "helm"
KV = Path(sys.executable).parent / "kubernetes-validate"
CHART = ROOT / "charts/dativo"

VALUES = """
image: {repository: registry.example.com/dativo, tag: "0.1.0"}
jobs:
  orders.yaml: |
    name: orders
    schedule: "*/15 * * * *"
    source: {reader: postgres, config: {url: "${env:PG_URL}", table: public.orders, cursor: updated_at}}
    target: {writer: parquet, config: {path: lake/orders}}
  files.yaml: |
    name: files
    schedule: {cron: "0 3 * * *", timezone: Europe/Berlin}
    source: {reader: file, config: {path: "data/*.csv"}}
    target: {writer: parquet, config: {path: lake/files}}
envFromSecret: etl-env
replicas: 2
stateUrlSecret: {name: dativo-state, key: url}
apiTokenSecret: {name: dativo-api, key: token}
serviceAccount:
  annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::123456789012:role/dativo"}
plugins: {image: registry.example.com/our-plugins:1.2}
"""


def helm(*args, values=None, tmp_path=None, check=True):
    cmd = [str(HELM), *args]
    if values is not None:
        f = tmp_path / f"values-{len(list(tmp_path.glob('values-*')))}.yaml"
        f.write_text(values)
        cmd += ["-f", str(f)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def validate(text, tmp_path):
    f = tmp_path / "rendered.yaml"
    f.write_text(text)
    p = subprocess.run([str(KV), "--strict", "-k", "1.31.0", str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_helm_chart_lints_renders_and_validates(tmp_path):
    helm("lint", str(CHART), "--strict", values=VALUES, tmp_path=tmp_path)
    out = helm("template", "etl", str(CHART), values=VALUES, tmp_path=tmp_path).stdout
    log = validate(out, tmp_path)
    for kind in ["deployment", "service", "configmap", "serviceaccount", "poddisruptionbudget"]:
        assert f"{kind}/etl-dativo" in log, log
    docs = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    sa, dep, pdb = docs["ServiceAccount"], docs["Deployment"], docs["PodDisruptionBudget"]
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/dativo")
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    # The PDB selects exactly the Deployment's pods.
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in pdb["spec"]["selector"]["matchLabels"].items())
    assert pdb["spec"]["maxUnavailable"] == 1 and dep["spec"]["replicas"] == 2
    c = pod["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["DATIVO_STATE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "dativo-state", "key": "url"}
    assert env["DATIVO_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "dativo-api"
    assert env["DATIVO_PLUGIN_PATH"]["value"] == "/opt/dativo/plugins"
    assert c["envFrom"] == [{"secretRef": {"name": "etl-env"}}]
    init = pod["initContainers"][0]
    assert init["image"] == "registry.example.com/our-plugins:1.2"
    assert {"name": "plugins", "mountPath": "/opt/dativo/plugins"} in init["volumeMounts"]
    assert any(m["name"] == "plugins" and m.get("readOnly") for m in c["volumeMounts"])
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["runAsNonRoot"]

    # What the pods would run, run here: the job files from the ConfigMap validate, and serve
    # starts with the Deployment's arguments and answers its probes.
    jobs = tmp_path / "etc-dativo"
    jobs.mkdir()
    for name, text in docs["ConfigMap"]["data"].items():
        (jobs / name).write_text(text)
    v = subprocess.run([BIN, "validate", *sorted(str(p) for p in jobs.iterdir())], capture_output=True, text=True,
                       env={**os.environ, "PG_URL": PG_URL})
    assert v.returncode == 0, v.stdout + v.stderr
    args = [a.replace("/etc/dativo", str(jobs)) for a in c["args"]]
    port = free_port()
    args[args.index("--listen") + 1] = f"127.0.0.1:{port}"
    work = tmp_path / "work"
    work.mkdir()
    serve = subprocess.Popen([BIN, *args], cwd=work, env={**os.environ, "PG_URL": PG_URL,
                                                          "DATIVO_STATE_DIR": str(work / ".dativo")},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, 30)
        for probe in [dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"],
                      dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]]:
            deadline = time.time() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe['httpGet']['path']}", timeout=5) as r:
                        assert r.status == 200
                        break
                except Exception:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/jobs", timeout=5) as r:
            listed = r.read().decode()
        assert "orders" in listed and "files" in listed, listed
    finally:
        serve.terminate()
        serve.wait(timeout=60)


def test_helm_chart_defaults_install_with_one_replica(tmp_path):
    values = "image: {repository: r/dativo, tag: '1'}\njobs:\n  a.yaml: \"name: a\\nsource: {reader: file, config: {path: 'x/*.csv'}}\\ntarget: {writer: parquet, config: {path: out}}\\n\"\n"
    out = helm("template", "etl", str(CHART), values=values, tmp_path=tmp_path).stdout
    validate(out, tmp_path)
    docs = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    assert docs["Deployment"]["spec"]["replicas"] == 1
    assert docs["Service"]["spec"]["sessionAffinity"] == "ClientIP"
    assert docs["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 45


@pytest.mark.parametrize("change, message", [
    ("jobs: {a.yaml: {name: a}}", "as a string"),
    ("jobs: {}", "give at least one job file"),
    ("stateUrlSecret: {name: ''}", "share state through PostgreSQL"),
    ("jobs: {orders.json: 'name: x'}", "end in .yaml or .yml"),
    ("serviceAccount: {create: false, name: ''}", "serviceAccount.name"),
])
def test_helm_chart_refuses_what_cannot_work(tmp_path, change, message):
    p = helm("template", "etl", str(CHART), values=VALUES + "\n" + change + "\n", tmp_path=tmp_path, check=False)
    assert p.returncode != 0 and message in p.stderr, p.stderr


def test_deploy_kubernetes_service_account_pdb_plugins_and_the_echoed_command(dativo, tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "orders.yaml").write_text((ROOT / "examples/jobs/postgres_to_iceberg.yaml").read_text()
                                     + 'schedule: "*/15 * * * *"\n')
    args = ["deploy", "kubernetes", jobs, "--serve", "--image", "registry/dativo:0.1", "--secret", "orders-env",
            "--state-url-secret", "dativo-state/url", "--service-account", "dativo",
            "--service-account-annotation", "eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/dativo",
            "--plugins-image", "registry/our-plugins:1.2", "--namespace", "etl"]
    out = dativo.run(*args, check=0).stdout
    header = next(l for l in out.splitlines() if l.startswith("# dativo deploy kubernetes"))
    for flag in ["--secret orders-env", "--serve", "--state-url-secret dativo-state/url", "--service-account dativo",
                 "--plugins-image registry/our-plugins:1.2", "--namespace etl", "--service-account-annotation"]:
        assert flag in header, header
    log = validate(out, tmp_path)
    assert "poddisruptionbudget/" in log and "serviceaccount/dativo" in log, log
    docs = [d for d in yaml.safe_load_all(out) if d]
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert sa["metadata"]["namespace"] == "etl"
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/dativo"}
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "dativo"
    assert pod["initContainers"][0]["image"] == "registry/our-plugins:1.2"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["DATIVO_PLUGIN_PATH"]["value"] == "/opt/dativo/plugins"
    # Sharded Jobs (no serve) get the ServiceAccount too; an annotation without a name is refused.
    out = dativo.run("deploy", "kubernetes", jobs / "orders.yaml", "--shards", "4", "--image", "x",
                     "--secret", "orders-env", "--service-account", "dativo", check=0).stdout
    validate(out, tmp_path)
    docs = [d for d in yaml.safe_load_all(out) if d]
    cj = next(d for d in docs if d["kind"] == "CronJob")
    assert cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"] == "dativo"
    assert not any(d["kind"] == "ServiceAccount" for d in docs), "created without annotations: it must exist"
    assert not any(d["kind"] == "PodDisruptionBudget" for d in docs), "a batch Job has no PDB"
    assert any(l.startswith("# dativo deploy kubernetes") and "--secret orders-env" in l for l in out.splitlines())
    p = dativo.run("deploy", "kubernetes", jobs / "orders.yaml", "--image", "x", "--secret", "s",
                   "--service-account-annotation", "a=b")
    assert p.returncode == 2 and "--service-account NAME" in p.stderr, p.stderr
    p = dativo.run("deploy", "kubernetes", jobs / "orders.yaml", "--image", "x", "--secret", "s",
                   "--service-account", "d", "--service-account-annotation", "no-equals-sign")
    assert p.returncode == 2 and "KEY=VALUE" in p.stderr, p.stderr
