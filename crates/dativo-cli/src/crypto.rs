//! `dativo decrypt` and `dativo verify`.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use dativo_connectors::crypto_tools::{self as tools, Dataset, OutFormat};
use dativo_core::job::{Implementation, Job};
use dativo_core::Error;

/// The encrypted dataset a job writes.
fn dataset(job_path: &Path) -> Result<(Job, Dataset), Error> {
    let job = Job::load(job_path)?;
    let cfg = &job.config.target.config;
    // The writer knows whether (and how) its dataset is encrypted.
    let open = match &job.config.target.writer {
        Implementation::Builtin(w) => {
            dativo_connectors::writer(w).and_then(|b| b.encrypted_dataset)
        }
        Implementation::Custom(_) => None,
    };
    let ds = match open {
        Some(open) => open(cfg),
        None => {
            let encrypting: Vec<&str> = dativo_connectors::writers()
                .iter()
                .filter(|w| w.encrypted_dataset.is_some())
                .map(|w| w.name)
                .collect();
            return Err(job.error_at(
                "target.writer",
                &format!(
                    "only the {} writers encrypt; this job uses another writer",
                    encrypting.join(" and ")
                ),
            ));
        }
    }
    .map_err(|e| job.locate("target.config", e))?;
    Ok((job, ds))
}

/// `dativo decrypt`.
pub fn decrypt(
    job_path: &Path,
    files: &[String],
    output: Option<&Path>,
    csv: Option<bool>,
) -> Result<ExitCode, Error> {
    let (job, ds) = dataset(job_path)?;
    let to_stdout = output.is_none_or(|p| p == Path::new("-"));
    let csv = csv.unwrap_or_else(|| {
        to_stdout
            || output
                .and_then(|p| p.extension())
                .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    });
    let format = if csv {
        OutFormat::Csv
    } else {
        OutFormat::Parquet
    };
    let (n, rows) = if to_stdout {
        let out = std::io::stdout();
        tools::decrypt(&ds, files, format, BufWriter::new(out))?
    } else {
        // A fresh 0600 file next to the output, renamed over it only when everything
        // decrypted: never a partial plaintext file, never an old file's looser mode.
        let path = output.expect("a path");
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.dativo-{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        ));
        let mut o = OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let f = o
            .open(&tmp)
            .map_err(|e| Error::from(e).context(format!("creating {}", tmp.display())))?;
        let r = tools::decrypt(&ds, files, format, BufWriter::new(f)).and_then(|n| {
            std::fs::rename(&tmp, path)
                .map_err(|e| Error::from(e).context(format!("writing {}", path.display())))?;
            Ok(n)
        });
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?
    };
    let target = output
        .filter(|_| !to_stdout)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "stdout".into());
    eprintln!(
        "decrypted {n} file(s), {rows} rows of job `{}` into {target}",
        job.name()
    );
    let _ = std::io::stderr().flush();
    Ok(ExitCode::SUCCESS)
}

/// `dativo verify`.
pub fn verify(job_path: &Path) -> Result<ExitCode, Error> {
    let (job, ds) = dataset(job_path)?;
    let rep = tools::verify(&ds)?;
    for l in &rep.ok {
        println!("ok      {l}");
    }
    for l in &rep.notes {
        println!("note    {l}");
    }
    for l in &rep.problems {
        println!("FAILED  {l}");
    }
    if rep.problems.is_empty() {
        println!(
            "verified: {} file(s) of job `{}` match the audit trail",
            rep.ok.len(),
            job.name()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Error::data(format!(
            "verification of job `{}` failed: {} problem(s), listed above",
            job.name(),
            rep.problems.len()
        )))
    }
}
