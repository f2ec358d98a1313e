//! `dativo deploy kubernetes`: manifests that run a job as N shards (an Indexed Job, or a
//! CronJob of one when the job has a schedule), and `dativo serve` as a Deployment.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::Path;

use serde_json::{json, Value};

use dativo_core::job::Job;
use dativo_core::{Error, Result};

/// What to generate.
#[derive(Clone, Copy)]
pub struct DeployOptions<'a> {
    /// The job file, or a directory of job files.
    pub job: &'a Path,
    /// Shards (parallel pods).
    pub shards: u32,
    /// The container image (see the Dockerfile).
    pub image: &'a str,
    /// Namespace of every object.
    pub namespace: Option<&'a str>,
    /// The Secret holding the job's `${env:…}` values (keys = variable names).
    pub secret: Option<&'a str>,
    /// `SECRET/KEY` holding a PostgreSQL state-store URL.
    pub state_url_secret: Option<&'a str>,
    /// Also a `dativo serve` Deployment (needs `state_url_secret`).
    pub serve: bool,
    /// Replicas of the serve Deployment.
    pub replicas: u32,
    /// The ServiceAccount the pods run as (IRSA / workload identity for object storage).
    pub service_account: Option<&'a str>,
    /// Annotations of a ServiceAccount to create (`KEY=VALUE`); none: it must exist.
    pub service_account_annotations: &'a [String],
    /// An image holding plugin libraries under `/plugins` (and a `cp`): copied into the pods
    /// by an init container, found through DATIVO_PLUGIN_PATH.
    pub plugins_image: Option<&'a str>,
}

/// Where the plugins image's libraries are copied to in the pods.
const PLUGIN_DIR: &str = "/opt/dativo/plugins";
/// `DATIVO_HOME` in pods with a plugins image: its `plugins` directory is [`PLUGIN_DIR`].
const DATIVO_HOME_DIR: &str = "/opt/dativo";

/// `dativo deploy plugins`: a Dockerfile and `plugins/NAME/VERSION/…` + `plugins/dativo.lock`,
/// exactly the installed, verified files of every plugin the lock pins.
pub fn plugins_context(
    lock: &std::path::Path,
    out: &std::path::Path,
    base: &str,
) -> Result<std::process::ExitCode> {
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::config(format!(
            "{} exists and is not empty; give a new directory to --out",
            out.display()
        )));
    }
    let locked = crate::registry::locked_dirs(lock)?;
    for (name, version, dir) in &locked {
        let i = dativo_plugins::registry::Installed::open(dir)?;
        if i.manifest.kind == dativo_plugins::registry::PluginKind::Python {
            return Err(Error::config(format!(
                "plugin {name} {version} is a Python plugin: a plugins image cannot install wheels into the dativo image's Python; add `RUN pip install --no-deps {}` to the dativo image instead",
                dir.join(i.manifest.wheel.as_deref().unwrap_or_default()).display()
            )));
        }
    }
    let root = out.join("plugins");
    for (name, version, dir) in &locked {
        // Exactly the verified files: those in the install record, the manifest and the record.
        let i = dativo_plugins::registry::Installed::open(dir)?;
        let dest = root.join(name).join(version);
        let files = i.record.files.keys().map(String::as_str).chain([
            dativo_plugins::registry::MANIFEST,
            dativo_plugins::registry::RECORD,
        ]);
        for rel in files {
            dativo_plugins::registry::check_relative(rel)?;
            let to = dest.join(rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("cannot create {}: {e}", parent.display())))?;
            }
            std::fs::copy(dir.join(rel), &to)
                .map_err(|e| Error::io(format!("cannot copy {}: {e}", dir.join(rel).display())))?;
        }
    }
    std::fs::create_dir_all(&root)
        .map_err(|e| Error::io(format!("cannot create {}: {e}", root.display())))?;
    std::fs::copy(lock, root.join("dativo.lock"))
        .map_err(|e| Error::io(format!("cannot copy {}: {e}", lock.display())))?;
    let dockerfile = format!(
        "# Made by `dativo deploy plugins --lock {}`: the plugins it pins, verified.\n# Used by `dativo deploy kubernetes --plugins-image` (an init container copies /plugins).\nFROM {base}\nCOPY plugins/ /plugins/\n",
        lock.display()
    );
    std::fs::write(out.join("Dockerfile"), dockerfile).map_err(|e| {
        Error::io(format!(
            "cannot write {}: {e}",
            out.join("Dockerfile").display()
        ))
    })?;
    for (name, version, _) in &locked {
        println!("{name} {version}");
    }
    println!(
        "{} plugin(s) in {} (docker build -t IMAGE {}; then --plugins-image IMAGE)",
        locked.len(),
        out.display(),
        out.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// `s` quoted for a POSIX shell when it needs it, on one line.
fn shq(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''").replace('\n', " "))
    }
}

/// The command that generated the manifests, every option included, for their header.
fn command_line(opts: &DeployOptions<'_>) -> String {
    let mut c = format!(
        "dativo deploy kubernetes {}",
        shq(&opts.job.display().to_string())
    );
    if !opts.serve || opts.shards > 1 {
        let _ = write!(c, " --shards {}", opts.shards);
    }
    let _ = write!(c, " --image {}", shq(opts.image));
    if let Some(ns) = opts.namespace {
        let _ = write!(c, " --namespace {}", shq(ns));
    }
    if let Some(s) = opts.secret {
        let _ = write!(c, " --secret {}", shq(s));
    }
    if opts.serve {
        let _ = write!(c, " --serve --replicas {}", opts.replicas.max(2));
    }
    if let Some(s) = opts.state_url_secret {
        let _ = write!(c, " --state-url-secret {}", shq(s));
    }
    if let Some(sa) = opts.service_account {
        let _ = write!(c, " --service-account {}", shq(sa));
    }
    for a in opts.service_account_annotations {
        let _ = write!(c, " --service-account-annotation {}", shq(a));
    }
    if let Some(i) = opts.plugins_image {
        let _ = write!(c, " --plugins-image {}", shq(i));
    }
    c
}

/// The pod spec of every workload in `docs` (Job, CronJob, Deployment).
fn pod_specs(docs: &mut [Value]) -> Vec<&mut Value> {
    docs.iter_mut()
        .filter_map(|d| match d["kind"].as_str() {
            Some("Job") | Some("Deployment") => d.pointer_mut("/spec/template/spec"),
            Some("CronJob") => d.pointer_mut("/spec/jobTemplate/spec/template/spec"),
            _ => None,
        })
        .collect()
}

/// What every generated set of manifests gets from the options: the ServiceAccount (created
/// when it has annotations) and the plugin libraries' init container.
fn decorate(docs: &mut Vec<Value>, opts: &DeployOptions<'_>, labels: &Value) -> Result<()> {
    if !opts.service_account_annotations.is_empty() && opts.service_account.is_none() {
        return Err(Error::config(
            "--service-account-annotation needs --service-account NAME: the ServiceAccount to create with it",
        ));
    }
    for spec in pod_specs(docs) {
        if let Some(sa) = opts.service_account {
            spec["serviceAccountName"] = json!(sa);
        }
        if let Some(img) = opts.plugins_image {
            spec["initContainers"] = json!([{
                "name": "plugins",
                "image": img,
                "command": ["cp", "-R", "/plugins/.", PLUGIN_DIR],
                "volumeMounts": [{"name": "plugins", "mountPath": PLUGIN_DIR}],
                "securityContext": sec_ctx(),
            }]);
            if let Some(v) = spec["volumes"].as_array_mut() {
                v.push(json!({"name": "plugins", "emptyDir": {}}));
            }
            if let Some(c) = spec.pointer_mut("/containers/0") {
                if let Some(m) = c["volumeMounts"].as_array_mut() {
                    m.push(json!({"name": "plugins", "mountPath": PLUGIN_DIR, "readOnly": true}));
                }
                if !c["env"].is_array() {
                    c["env"] = json!([]);
                }
                if let Some(e) = c["env"].as_array_mut() {
                    e.push(json!({"name": "DATIVO_PLUGIN_PATH", "value": PLUGIN_DIR}));
                    // Registry plugins (`dativo deploy plugins`): $DATIVO_HOME/plugins is the
                    // same directory, and the lock the image carries pins their versions.
                    e.push(json!({"name": "DATIVO_HOME", "value": DATIVO_HOME_DIR}));
                    e.push(json!({"name": "DATIVO_LOCK", "value": format!("{PLUGIN_DIR}/dativo.lock")}));
                }
            }
        }
    }
    if let (Some(sa), false) = (
        opts.service_account,
        opts.service_account_annotations.is_empty(),
    ) {
        let mut annotations = serde_json::Map::new();
        for a in opts.service_account_annotations {
            let Some((k, v)) = a.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
                return Err(Error::config(format!(
                    "--service-account-annotation `{a}`: expected KEY=VALUE (e.g. eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/dativo)"
                )));
            };
            annotations.insert(k.trim().to_string(), json!(v.trim()));
        }
        let mut meta = json!({"name": sa, "labels": labels, "annotations": annotations});
        if let Some(ns) = opts.namespace {
            meta["namespace"] = json!(ns);
        }
        docs.insert(
            0,
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}),
        );
    }
    Ok(())
}

/// `${env:NAME}` / `${env:NAME:-default}` names in a job file.
fn env_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("${env:") {
        rest = &rest[i + 6..];
        let end = rest.find(['}', ':']).unwrap_or(rest.len());
        let name = &rest[..end];
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(name.to_string());
        }
    }
    out
}

/// A DNS-1123 name from a job name.
fn k8s_name(name: &str) -> String {
    let mut s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s = s.trim_matches('-').to_string();
    s.truncate(52);
    if s.is_empty() {
        "dativo-job".into()
    } else {
        s
    }
}

/// Memory one shard needs, MiB: batches in flight (channel depth + one in the reader, at an
/// assumed 1 KiB per row) + the writer's row-group buffer + the process itself.
pub fn memory_mib(job: &Job) -> u64 {
    let batch_rows = job
        .config
        .source
        .config
        .get("batch_size")
        .and_then(Value::as_u64)
        .unwrap_or(65_536);
    // A job with `tables:` reads `max_parallel_streams` tables at once.
    let streams = if dativo_core::streams::is_multi(job) {
        job.config.max_parallel_streams as u64
    } else {
        1
    };
    let in_flight = (job.config.channel_depth as u64 + 2) * batch_rows * 1024 * streams;
    // The writers' default `row_group_bytes`, buffered per stream.
    let writer = (32u64 << 20) * streams;
    let base = 96u64 << 20;
    (in_flight + writer + base).div_ceil(1 << 20)
}

fn sec_ctx() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": 10001,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]}
    })
}

fn env_list(names: &BTreeSet<String>, opts: &DeployOptions<'_>) -> Result<Vec<Value>> {
    let mut env = Vec::new();
    if !names.is_empty() {
        let secret = opts.secret.ok_or_else(|| {
            Error::config(format!(
                "the job reads {} from the environment: name the Secret that holds them with --secret",
                names.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        for n in names {
            env.push(json!({"name": n, "valueFrom": {"secretKeyRef": {"name": secret, "key": n}}}));
        }
    }
    if let Some(s) = opts.state_url_secret {
        let (name, key) = s.split_once('/').ok_or_else(|| {
            Error::config("--state-url-secret is SECRET/KEY (e.g. dativo-state/url)")
        })?;
        env.push(json!({"name": "DATIVO_STATE_URL", "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}));
    }
    Ok(env)
}

/// The manifests, as YAML documents.
pub fn kubernetes(opts: &DeployOptions<'_>) -> Result<String> {
    if opts.job.is_dir() {
        return kubernetes_dir(opts);
    }
    let text = std::fs::read_to_string(opts.job)
        .map_err(|e| Error::config(format!("cannot read {}: {e}", opts.job.display())))?;
    let job = Job::load_with_env(opts.job, &|_| Some("placeholder".into()))?;
    if opts.shards == 0 {
        return Err(Error::config("--shards must be at least 1"));
    }
    let name = k8s_name(job.name());
    let mib = memory_mib(&job);
    let meta = |n: &str| {
        let mut m = json!({"name": n, "labels": {"app.kubernetes.io/name": "dativo", "dativo.dev/job": name}});
        if let Some(ns) = opts.namespace {
            m["namespace"] = json!(ns);
        }
        m
    };
    let env = env_list(&env_names(&text), opts)?;
    let file_name = "job.yaml";
    let mut docs = vec![json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(&format!("{name}-job")),
        "data": {file_name: text},
    })];
    let resources = json!({
        "requests": {"cpu": "1", "memory": format!("{mib}Mi")},
        "limits": {"memory": format!("{}Mi", mib * 2)}
    });
    let volumes = json!([
        {"name": "job", "configMap": {"name": format!("{name}-job")}},
        {"name": "work", "emptyDir": {}}
    ]);
    let mounts = json!([
        {"name": "job", "mountPath": "/etc/dativo", "readOnly": true},
        {"name": "work", "mountPath": "/work"}
    ]);
    let mut args: Vec<String> = ["run", &format!("/etc/dativo/{file_name}"), "--no-progress"]
        .into_iter()
        .chain(["--log-format", "json"])
        .map(str::to_string)
        .collect();
    if opts.shards > 1 {
        args.extend(["--shards".to_string(), opts.shards.to_string()]);
    }
    let job_spec = json!({
        "completions": opts.shards,
        "parallelism": opts.shards,
        "completionMode": "Indexed",
        "backoffLimitPerIndex": 3,
        "maxFailedIndexes": opts.shards,
        "ttlSecondsAfterFinished": 86400,
        "template": {
            "metadata": {"labels": {"app.kubernetes.io/name": "dativo", "dativo.dev/job": name}},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {"fsGroup": 10001},
                "containers": [{
                    "name": "dativo",
                    "image": opts.image,
                    "args": args,
                    "env": env,
                    "resources": resources,
                    "volumeMounts": mounts,
                    "securityContext": sec_ctx(),
                }],
                "volumes": volumes,
            }
        }
    });
    if opts.serve && opts.shards > 1 {
        return Err(Error::config(
            "--serve runs the job (unsharded) on its schedule inside `dativo serve`; for N shards use --shards without --serve",
        ));
    }
    // With --serve the Deployment runs the job; a Job/CronJob as well would run it twice.
    match &job.config.schedule {
        _ if opts.serve => {}
        Some(s) => {
            if s.cron.split_whitespace().count() != 5 {
                return Err(Error::config(format!(
                    "schedule `{}` has seconds; Kubernetes CronJobs run at most once a minute — use a 5-field cron, or `dativo serve`",
                    s.cron
                )));
            }
            let mut cj = json!({
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "metadata": meta(&name),
                "spec": {
                    "schedule": s.cron,
                    "concurrencyPolicy": "Forbid",
                    "successfulJobsHistoryLimit": 3,
                    "failedJobsHistoryLimit": 3,
                    "jobTemplate": {"spec": job_spec},
                }
            });
            if let Some(tz) = &s.timezone {
                cj["spec"]["timeZone"] = json!(tz);
            }
            docs.push(cj);
        }
        None if opts.serve => {}
        None => docs.push(json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta(&name),
            "spec": job_spec,
        })),
    }
    if opts.serve {
        let env = env_list(&env_names(&text), opts)?;
        docs.extend(serve_docs(&name, env, mib, &volumes, &mounts, opts)?);
    }
    decorate(
        &mut docs,
        opts,
        &json!({"app.kubernetes.io/name": "dativo", "dativo.dev/job": name}),
    )?;
    let mut out = String::new();
    for w in shared_target_warnings(&job) {
        eprintln!("warning: {w}");
        let _ = writeln!(out, "# WARNING: {w}");
    }
    let _ = writeln!(
        out,
        "# {}\n# memory per shard: {mib}Mi requested (see docs/scaling.md for the formula)",
        command_line(opts)
    );
    for d in docs {
        out.push_str("---\n");
        out.push_str(&to_yaml(&d)?);
    }
    Ok(out)
}

/// The `dativo serve` Deployment (and its Service) running the jobs mounted at /etc/dativo.
fn serve_docs(
    name: &str,
    env: Vec<Value>,
    mib: u64,
    volumes: &Value,
    mounts: &Value,
    opts: &DeployOptions<'_>,
) -> Result<Vec<Value>> {
    let meta = |n: &str| {
        let mut m = json!({"name": n, "labels": {"app.kubernetes.io/name": "dativo", "dativo.dev/job": name}});
        if let Some(ns) = opts.namespace {
            m["namespace"] = json!(ns);
        }
        m
    };
    {
        if opts.state_url_secret.is_none() {
            return Err(Error::config(
                "--serve runs several replicas: they share state through PostgreSQL, so give --state-url-secret SECRET/KEY",
            ));
        }
        let mut senv = env;
        if let Some(secret) = opts.secret {
            senv.push(json!({"name": "DATIVO_API_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "DATIVO_API_TOKEN", "optional": true}}}));
        }
        let serve = format!("{name}-serve");
        let labels = json!({"app.kubernetes.io/name": "dativo-serve", "dativo.dev/job": name});
        let mut dmeta = meta(&serve);
        dmeta["labels"] = labels.clone();
        let mut docs = vec![json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": dmeta,
            "spec": {
                "replicas": opts.replicas.max(2),
                "selector": {"matchLabels": labels},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        // serve's --grace, then the cancelled runs' time to stop.
                        "terminationGracePeriodSeconds": 120,
                        "securityContext": {"fsGroup": 10001},
                        "containers": [{
                            "name": "dativo",
                            "image": opts.image,
                            "args": ["serve", "--jobs", "/etc/dativo", "--listen", "0.0.0.0:8080", "--grace", "45s"],
                            "env": senv,
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
                            "resources": {
                                "requests": {"cpu": "1", "memory": format!("{}Mi", mib + 64)},
                                "limits": {"memory": format!("{}Mi", (mib + 64) * 2)}
                            },
                            "volumeMounts": mounts,
                            "securityContext": sec_ctx(),
                        }],
                        "volumes": volumes,
                    }
                }
            }
        })];
        let mut smeta = meta(&serve);
        smeta["labels"] = labels.clone();
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": smeta,
            // A run's progress, log and Cancel live on the replica running it.
            "spec": {"selector": labels, "sessionAffinity": "ClientIP", "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]},
        }));
        // A node drain takes one replica at a time: the others keep scheduling (and a run on
        // the drained one ends within --grace, its work resumed elsewhere from its commits).
        let mut pmeta = meta(&serve);
        pmeta["labels"] = labels.clone();
        docs.push(json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": pmeta,
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
        }));
        Ok(docs)
    }
}

/// `deploy kubernetes DIR`: every job file of DIR (`*.yaml`, `*.yml`). With `--serve`, ONE
/// ConfigMap holding them all and one `dativo serve` Deployment running each on its schedule;
/// otherwise each job's manifests in turn.
fn kubernetes_dir(opts: &DeployOptions<'_>) -> Result<String> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(opts.job)
        .map_err(|e| Error::config(format!("cannot read {}: {e}", opts.job.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::config(format!(
            "{} holds no job files (*.yaml, *.yml)",
            opts.job.display()
        )));
    }
    if !opts.serve {
        let mut out = String::new();
        for (i, f) in files.iter().enumerate() {
            // The ServiceAccount to create comes once, with the first job's manifests.
            let annotations: &[String] = if i == 0 {
                opts.service_account_annotations
            } else {
                &[]
            };
            out.push_str(&kubernetes(&DeployOptions {
                job: f,
                service_account_annotations: annotations,
                ..*opts
            })?);
        }
        return Ok(out);
    }
    if opts.shards > 1 {
        return Err(Error::config(
            "--serve runs the jobs (unsharded) on their schedules inside `dativo serve`; for N shards deploy a job file with --shards",
        ));
    }
    let dir_name = opts
        .job
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "jobs".into());
    let name = k8s_name(&dir_name);
    let mut data = serde_json::Map::new();
    let mut names = BTreeSet::new();
    let mut mib = 0;
    let mut jobs = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| Error::config(format!("cannot read {}: {e}", f.display())))?;
        let job = Job::load_with_env(f, &|_| Some("placeholder".into()))?;
        if !jobs.insert(job.name().to_string()) {
            return Err(Error::config(format!(
                "two job files in {} are named `{}`: job names must be unique",
                opts.job.display(),
                job.name()
            )));
        }
        mib = mib.max(memory_mib(&job));
        names.extend(env_names(&text));
        let key = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        data.insert(key, Value::String(text));
    }
    let mut cm_meta = json!({"name": format!("{name}-jobs"), "labels": {"app.kubernetes.io/name": "dativo", "dativo.dev/job": name}});
    if let Some(ns) = opts.namespace {
        cm_meta["namespace"] = json!(ns);
    }
    let mut docs = vec![json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": cm_meta,
        "data": data,
    })];
    let volumes = json!([
        {"name": "job", "configMap": {"name": format!("{name}-jobs")}},
        {"name": "work", "emptyDir": {}}
    ]);
    let mounts = json!([
        {"name": "job", "mountPath": "/etc/dativo", "readOnly": true},
        {"name": "work", "mountPath": "/work"}
    ]);
    let env = env_list(&names, opts)?;
    docs.extend(serve_docs(&name, env, mib, &volumes, &mounts, opts)?);
    decorate(
        &mut docs,
        opts,
        &json!({"app.kubernetes.io/name": "dativo", "dativo.dev/job": name}),
    )?;
    let mut out = format!(
        "# {}: {} jobs in one serve Deployment\n# memory: {}Mi requested (the largest job's need + 64Mi)\n",
        command_line(opts),
        files.len(),
        mib + 64
    );
    for d in docs {
        out.push_str("---\n");
        out.push_str(&to_yaml(&d)?);
    }
    Ok(out)
}

/// Targets each pod would keep to itself (a local directory, a SQLite catalog).
fn shared_target_warnings(job: &Job) -> Vec<String> {
    let cfg = &job.config.target.config;
    let s = |k: &str| cfg.get(k).and_then(Value::as_str);
    let remote = |p: &str| p.contains("://") && !p.starts_with("file://");
    let mut w = Vec::new();
    match &job.config.target.writer {
        dativo_core::job::Implementation::Builtin(n) if n == "parquet" => {
            if let Some(p) = s("path").filter(|p| !remote(p)) {
                w.push(format!(
                    "the target path `{p}` is local to each pod: use s3://… (docs/scaling.md)"
                ));
            }
        }
        dativo_core::job::Implementation::Builtin(n) if n == "iceberg" => {
            let uri = cfg
                .get("catalog")
                .and_then(|c| c.get("uri"))
                .and_then(Value::as_str)
                .unwrap_or("sqlite://.dativo/catalog.db");
            if uri.starts_with("sqlite:") {
                w.push(format!("the Iceberg catalog `{uri}` is a file in each pod: use a PostgreSQL or REST catalog (docs/scaling.md)"));
            }
            if !s("warehouse").is_some_and(remote) {
                w.push("the Iceberg warehouse is local to each pod: set `warehouse: s3://…` (docs/scaling.md)".into());
            }
        }
        _ => {}
    }
    w
}

fn to_yaml(v: &Value) -> Result<String> {
    let y = json_to_yaml(v);
    let mut s = String::new();
    let mut e = yaml_rust2::YamlEmitter::new(&mut s);
    e.multiline_strings(true);
    e.dump(&y)
        .map_err(|e| Error::internal(format!("writing YAML: {e:?}")))?;
    let s = s.strip_prefix("---\n").unwrap_or(&s).to_string();
    Ok(s + "\n")
}

fn json_to_yaml(v: &Value) -> yaml_rust2::Yaml {
    use yaml_rust2::Yaml;
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(a) => Yaml::Array(a.iter().map(json_to_yaml).collect()),
        Value::Object(o) => {
            let mut h = yaml_rust2::yaml::Hash::new();
            for (k, v) in o {
                h.insert(Yaml::String(k.clone()), json_to_yaml(v));
            }
            Yaml::Hash(h)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(k8s_name("Orders_PG.v2"), "orders-pg-v2");
        let n = env_names("a: ${env:PG_URL}\nb: \"${env:TOKEN:-x}\" ${file:y}");
        assert_eq!(n.into_iter().collect::<Vec<_>>(), ["PG_URL", "TOKEN"]);
    }
}
