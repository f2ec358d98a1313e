//! The status page: one self-contained HTML document, rendered on the server, refreshed every
//! five seconds. No scripts, no external assets.

use std::fmt::Write;

use crate::Server;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn human_rate(rows: u64, secs: f64) -> String {
    if secs <= 0.0 || rows == 0 {
        return "—".into();
    }
    let r = rows as f64 / secs;
    if r >= 1e6 {
        format!("{:.1}M rows/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k rows/s", r / 1e3)
    } else {
        format!("{r:.0} rows/s")
    }
}

pub(crate) fn render(server: &Server) -> String {
    let (jobs, invalid) = server.job_views();
    let running = jobs.iter().filter(|j| j.running.is_some()).count();
    let failed = jobs
        .iter()
        .filter(|j| {
            j.last_run
                .as_ref()
                .is_some_and(|l| l.status == dativo_runtime::RunStatus::Failed)
        })
        .count();
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>dativo serve</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
h1 {{ font-size: 20px; margin: 0 0 .2em; }} .sub {{ color: #666; margin-bottom: 1.2em; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: .45em .7em; border-bottom: 1px solid #e4e4e4; vertical-align: top; }}
th {{ background: #f6f6f6; font-weight: 600; }}
.succeeded {{ color: #17803d; }} .failed, .interrupted {{ color: #b42318; font-weight: 600; }}
.cancelled {{ color: #a15c07; }} .running {{ color: #1d4ed8; font-weight: 600; }}
.err {{ color: #b42318; font-size: 12px; max-width: 40em; }} code {{ font-size: 12px; }}
.tiles span {{ display: inline-block; margin-right: 2em; }} .tiles b {{ font-size: 18px; }}
</style></head><body>
<h1>dativo serve</h1>
<div class="sub">jobs from <code>{dir}</code> · refreshed every 5 s · <a href="/metrics">metrics</a> · <a href="/api/jobs">API</a></div>
<p class="tiles"><span><b id="jobs-count">{n}</b> jobs</span><span><b>{running}</b> running</span><span><b>{failed}</b> failed last run</span><span><b>{inv}</b> invalid files</span></p>
<table id="jobs"><thead><tr><th>job</th><th>reader → writer</th><th>schedule</th><th>next run</th><th>status</th><th>last run</th><th>rows (last run)</th><th>throughput</th><th>rows since start</th></tr></thead><tbody>
"#,
        dir = esc(&server.opts.jobs_dir.display().to_string()),
        n = jobs.len(),
        inv = invalid.len(),
    );
    for j in &jobs {
        let status = if j.running.is_some() {
            "<span class=\"running\">running</span>".to_string()
        } else if j.pending {
            "queued".to_string()
        } else {
            "idle".to_string()
        };
        let (last, rows, rate, err) = match &j.last_run {
            Some(l) => (
                format!(
                    "<span class=\"{s}\">{s}</span> {t}<br><small>{secs:.1} s</small>",
                    s = l.status.as_str(),
                    t = esc(&l.ended_at),
                    secs = l.seconds
                ),
                format!("{}", l.rows),
                human_rate(l.rows, l.seconds),
                l.error
                    .as_ref()
                    .map(|e| format!("<div class=\"err\">{}</div>", esc(e)))
                    .unwrap_or_default(),
            ),
            None => ("—".into(), "—".into(), "—".into(), String::new()),
        };
        let _ = writeln!(
            o,
            "<tr class=\"job\" data-job=\"{name}\"><td><b>{name}</b><br><small>{desc}</small></td><td>{r} → {w}</td><td><code>{sched}</code> {tz}</td><td>{next}</td><td>{status}</td><td>{last}{err}</td><td>{rows}</td><td>{rate}</td><td>{total}</td></tr>",
            total = server.metrics.rows(&j.name),
            name = esc(&j.name),
            desc = esc(j.description.as_deref().unwrap_or("")),
            r = esc(&j.reader),
            w = esc(&j.writer),
            sched = esc(j.schedule.as_deref().unwrap_or("manual")),
            tz = esc(j.timezone.as_deref().unwrap_or("")),
            next = esc(j.next_run.as_deref().unwrap_or("—")),
        );
    }
    o.push_str("</tbody></table>\n");
    if !invalid.is_empty() {
        o.push_str("<h2>Invalid job files</h2><table id=\"invalid\"><tr><th>file</th><th>error</th></tr>\n");
        for i in &invalid {
            let _ = writeln!(
                o,
                "<tr><td><code>{}</code></td><td class=\"err\">{}</td></tr>",
                esc(&i.file),
                esc(&i.error)
            );
        }
        o.push_str("</table>\n");
    }
    o.push_str("</body></html>\n");
    o
}
