//! The console: the jobs page (`/`) and a page per job (`/jobs/NAME`) — run history, a chart
//! of rows per run, the selected run's log, the committed state, run-now and cancel buttons.
//! Self-contained HTML rendered on the server (readable without scripts); a small inline
//! script shows times in the browser's time zone, groups digits, refreshes every five seconds
//! and sends the trigger and cancel requests with the API token typed into the page. No
//! external assets.

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
<html lang="en"><head><meta charset="utf-8"><noscript><meta http-equiv="refresh" content="5"></noscript>
<title>dativo serve</title>
<style>{css}</style></head><body>
<h1>dativo serve</h1>
<div class="sub">jobs from <code>{dir}</code> · refreshed every 5 s · times in <span class="tz">UTC</span> · <a href="/metrics">metrics</a> · <a href="/api/jobs">API</a></div>
<p class="tiles"><span><b id="jobs-count">{n}</b> jobs</span><span><b>{running}</b> running</span><span><b>{failed}</b> failed last run</span><span><b>{inv}</b> invalid files</span></p>
<table id="jobs"><thead><tr><th>job</th><th>reader → writer</th><th>schedule</th><th>next run</th><th>status</th><th>last run</th><th>rows (last run)</th><th>throughput</th><th>rows since start</th></tr></thead><tbody>
"#,
        css = CSS,
        dir = esc(&server.opts.jobs_dir.display().to_string()),
        n = jobs.len(),
        inv = invalid.len(),
    );
    for j in &jobs {
        let status = if j.running.is_some() {
            running_line(j)
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
                    t = time(&l.ended_at),
                    secs = l.seconds
                ),
                num(l.rows),
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
            "<tr class=\"job\" data-job=\"{name}\"><td><a href=\"/jobs/{href}\"><b>{name}</b></a><br><small>{desc}</small></td><td>{r} → {w}</td><td><code>{sched}</code> {tz}</td><td>{next}</td><td>{status}</td><td>{last}{err}</td><td>{rows}</td><td>{rate}</td><td>{total}</td></tr>",
            total = num(server.metrics.rows(&j.name)),
            href = url_part(&j.name),
            name = esc(&j.name),
            desc = esc(j.description.as_deref().unwrap_or("")),
            r = esc(&j.reader),
            w = esc(&j.writer),
            sched = esc(j.schedule.as_deref().unwrap_or("manual")),
            tz = esc(j.timezone.as_deref().unwrap_or("")),
            next = j.next_run.as_deref().map(time).unwrap_or_else(|| "—".into()),
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
    let _ = writeln!(o, "<script>{SCRIPT}</script></body></html>");
    o
}

/// Shared by both pages.
const CSS: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 20px; margin: 0 0 .2em; } h2 { font-size: 16px; margin: 1.4em 0 .4em; }
.sub { color: #666; margin-bottom: 1.2em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .45em .7em; border-bottom: 1px solid #e4e4e4; vertical-align: top; }
th { background: #f6f6f6; font-weight: 600; } td.n, th.n { text-align: right; }
.succeeded { color: #17803d; } .failed, .interrupted { color: #b42318; font-weight: 600; }
.cancelled { color: #a15c07; } .running { color: #1d4ed8; font-weight: 600; }
.err { color: #b42318; font-size: 12px; max-width: 40em; } code { font-size: 12px; }
.tiles span { display: inline-block; margin-right: 2em; } .tiles b { font-size: 18px; }
pre { background: #f6f6f6; padding: .8em; overflow: auto; max-height: 28em; font-size: 12px; }
.actions { margin: 1em 0; } .actions button { margin-right: .6em; padding: .35em .9em; }
#msg.ok { color: #17803d; } #msg.bad { color: #b42318; } tr.sel { background: #eef4ff; }
svg text { font: 11px system-ui, sans-serif; fill: #666; }
";

/// Times in the browser's zone, digits grouped, run-now and cancel, refresh every 5 s.
const SCRIPT: &str = r#"
(function () {
  var fmt = new Intl.NumberFormat();
  var zone = Intl.DateTimeFormat().resolvedOptions().timeZone || 'local time';
  document.querySelectorAll('time[datetime]').forEach(function (t) {
    var d = new Date(t.getAttribute('datetime'));
    if (!isNaN(d)) { t.title = t.getAttribute('datetime'); t.textContent = d.toLocaleString(); }
  });
  document.querySelectorAll('.tz').forEach(function (e) { e.textContent = zone; });
  document.querySelectorAll('[data-n]').forEach(function (e) { e.textContent = fmt.format(Number(e.dataset.n)); });
  var pre = document.getElementById('log-text');
  if (pre) { pre.scrollTop = pre.scrollHeight; }
  var tok = document.getElementById('token'), msg = document.getElementById('msg'), paused = 0;
  if (tok) {
    tok.value = sessionStorage.getItem('dativo-token') || '';
    tok.addEventListener('input', function () { sessionStorage.setItem('dativo-token', tok.value); paused = Date.now(); });
  }
  document.querySelectorAll('button[data-post]').forEach(function (b) {
    b.addEventListener('click', function () {
      b.disabled = true; paused = Date.now();
      var h = {}; if (tok && tok.value) { h['Authorization'] = 'Bearer ' + tok.value; }
      fetch(b.dataset.post, { method: 'POST', headers: h }).then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (body) {
          var ok = r.status < 300;
          msg.className = ok ? 'ok' : 'bad';
          msg.textContent = ok ? b.dataset.ok + (body.run_id ? ' — run ' + body.run_id : '') + (body.status === 'queued' ? ' (queued)' : '')
                               : 'refused (HTTP ' + r.status + '): ' + (body.error || '');
          // After Run now, the new run's log (not a previously selected one's).
          setTimeout(function () {
            if (ok && b.id === 'run-now') { location.href = location.pathname; } else { location.reload(); }
          }, ok ? 1200 : 8000);
        });
      }).catch(function (e) { msg.className = 'bad'; msg.textContent = 'request failed: ' + e; b.disabled = false; });
    });
  });
  setInterval(function () {
    if (document.activeElement !== tok && Date.now() - paused > 8000) { location.reload(); }
  }, 5000);
})();
"#;

/// A time as the page shows it: `<time>` with the RFC 3339 value, shown in UTC until the script
/// turns it into the browser's zone.
fn time(rfc3339: &str) -> String {
    let shown = chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string()
        })
        .unwrap_or_else(|_| rfc3339.to_string());
    format!("<time datetime=\"{}\">{}</time>", esc(rfc3339), esc(&shown))
}

/// A count, digits grouped (by the server; the script regroups in the browser's locale).
fn num(n: u64) -> String {
    let s = n.to_string();
    let mut g = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            g.push(',');
        }
        g.push(c);
    }
    format!("<span data-n=\"{n}\">{g}</span>")
}

/// A job name in a URL path.
fn url_part(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// "running for 12 s: 40,000 rows read, 30,000 committed".
fn running_line(j: &crate::http::JobView) -> String {
    let mut o = "<span class=\"running\">running</span>".to_string();
    if let Some(secs) = j.running_seconds {
        let _ = write!(o, " for {}", duration(secs));
    }
    if let (Some(r), Some(c)) = (j.running_rows, j.running_committed) {
        let _ = write!(
            o,
            "<br><small>{} rows read, {} committed</small>",
            num(r),
            num(c)
        );
    }
    o
}

fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{} h {} min", s / 3600, s % 3600 / 60)
    }
}

/// Rows per run, oldest on the left: a bar per run coloured by its status, its time and rows
/// in the bar's tooltip.
fn chart(runs: &[dativo_runtime::RunRecord]) -> String {
    let runs: Vec<_> = runs.iter().take(30).rev().collect();
    if runs.is_empty() {
        return String::new();
    }
    let (w, h, pad) = (720.0_f64, 160.0_f64, 40.0_f64);
    let max = runs.iter().map(|r| r.rows).max().unwrap_or(0).max(1) as f64;
    let step = (w - pad) / runs.len() as f64;
    let mut o = format!(
        "<svg id=\"chart\" role=\"img\" aria-label=\"rows per run\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\">",
        h + 20.0,
        h + 20.0
    );
    let _ = write!(
        o,
        "<line x1=\"{pad}\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" stroke=\"#bbb\"/><text x=\"0\" y=\"12\">{}</text><text x=\"0\" y=\"{h}\">0</text>",
        max as u64
    );
    for (i, r) in runs.iter().enumerate() {
        let bh = (r.rows as f64 / max * (h - 20.0)).max(if r.rows > 0 { 1.0 } else { 0.0 });
        let color = match r.status.as_str() {
            "succeeded" => "#17803d",
            "running" => "#1d4ed8",
            "cancelled" => "#a15c07",
            _ => "#b42318",
        };
        let _ = write!(
            o,
            "<rect class=\"bar\" data-rows=\"{rows}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{t}: {rows} rows, {st}</title></rect>",
            rows = r.rows,
            x = pad + i as f64 * step + step * 0.15,
            y = h - bh,
            bw = step * 0.7,
            t = esc(&r.started_at),
            st = r.status.as_str(),
        );
    }
    let _ = write!(
        o,
        "<text x=\"{pad}\" y=\"{}\">{} runs, oldest left</text></svg>",
        h + 16.0,
        runs.len()
    );
    o
}

/// What the job page shows, gathered by the handler.
pub(crate) struct JobPage<'a> {
    pub view: &'a crate::http::JobView,
    pub runs: &'a [dativo_runtime::RunRecord],
    /// The committed state, scrubbed, as JSON text; `None`: none.
    pub state: Option<String>,
    /// The state store could not be read (its error, scrubbed).
    pub store_error: Option<String>,
    /// The run whose log is shown, and its lines (`None`: not on this instance).
    pub selected: Option<String>,
    pub log: Option<Vec<String>>,
    /// Whether `serve` accepts trigger and cancel requests (it has a token).
    pub writable: bool,
    /// The store says a run of the job is going on, on another instance: since when.
    pub elsewhere: Option<String>,
}

/// `/jobs/NAME`.
pub(crate) fn render_job(p: &JobPage<'_>) -> String {
    let j = p.view;
    let name = esc(&j.name);
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{name} — dativo serve</title><style>{CSS}</style></head><body>
<div class="sub"><a href="/">← all jobs</a> · times in <span class="tz">UTC</span> · refreshed every 5 s</div>
<h1 id="job-name">{name}</h1>
<div class="sub">{desc} <code>{r}</code> → <code>{w}</code> · schedule <code>{sched}</code> {tz} · next run {next} · file <code>{file}</code></div>
"#,
        desc = esc(j.description.as_deref().unwrap_or("")),
        r = esc(&j.reader),
        w = esc(&j.writer),
        sched = esc(j.schedule.as_deref().unwrap_or("manual")),
        tz = esc(j.timezone.as_deref().unwrap_or("")),
        next = j
            .next_run
            .as_deref()
            .map(time)
            .unwrap_or_else(|| "—".into()),
        file = esc(&j.file),
    );
    let status = match (&j.running, j.pending, &p.elsewhere) {
        (Some(_), _, _) => running_line(j),
        (None, _, Some(since)) => format!(
            "<span class=\"running\">running on another instance</span> since {} (its progress, log and Cancel are on that instance)",
            time(since)
        ),
        (None, true, None) => "queued".into(),
        (None, false, None) => "idle".into(),
    };
    let _ = write!(o, "<p id=\"status\">{status}");
    if let Some(lag) = j.lag_seconds {
        let _ = write!(
            o,
            " · change data capture lag at the last commit: <b id=\"lag\">{}</b>",
            duration(lag)
        );
    }
    o.push_str("</p>\n<div class=\"actions\">");
    let href = url_part(&j.name);
    if p.writable {
        let _ = write!(
            o,
            "<label>API token <input id=\"token\" type=\"password\" autocomplete=\"off\" size=\"24\"></label> <button id=\"run-now\" data-post=\"/api/jobs/{href}/runs\" data-ok=\"started\">Run now</button>"
        );
        if let Some(run) = &j.running {
            let _ = write!(
                o,
                "<button id=\"cancel\" data-post=\"/api/runs/{}/cancel\" data-ok=\"cancelling\">Cancel the running run</button>",
                url_part(run)
            );
        }
        o.push_str(" <span id=\"msg\"></span>");
    } else {
        o.push_str("<small>Run now and cancel are disabled: start <code>dativo serve</code> with DATIVO_API_TOKEN set.</small><span id=\"msg\"></span>");
    }
    o.push_str("</div>\n");
    if let Some(e) = &p.store_error {
        let _ = write!(o, "<p class=\"err\">state store: {}</p>", esc(e));
    }
    o.push_str("<h2>Rows per run</h2>\n");
    if p.runs.is_empty() {
        o.push_str("<p>No runs yet.</p>\n");
    } else {
        o.push_str(&chart(p.runs));
        o.push_str("\n<h2>Runs</h2>\n<table id=\"runs\"><thead><tr><th>started</th><th class=\"n\">seconds</th><th>status</th><th class=\"n\">rows</th><th class=\"n\">bytes</th><th>error</th><th>log</th></tr></thead><tbody>\n");
        for r in p.runs {
            let secs = r
                .ended_at
                .as_deref()
                .and_then(|e| {
                    let a = chrono::DateTime::parse_from_rfc3339(&r.started_at).ok()?;
                    let b = chrono::DateTime::parse_from_rfc3339(e).ok()?;
                    Some(format!("{:.1}", (b - a).num_milliseconds() as f64 / 1000.0))
                })
                .unwrap_or_else(|| "—".into());
            let err = r
                .error
                .as_deref()
                .map(|e| e.lines().next().unwrap_or(""))
                .unwrap_or("");
            let sel = p.selected.as_deref() == Some(r.run_id.as_str());
            let _ = writeln!(
                o,
                "<tr class=\"run{cls}\" data-run=\"{id}\"><td>{t}</td><td class=\"n\">{secs}</td><td class=\"{st}\">{st}</td><td class=\"n\">{rows}</td><td class=\"n\">{bytes}</td><td class=\"err\">{err}</td><td><a href=\"/jobs/{href}?run={idu}#log\">log</a></td></tr>",
                cls = if sel { " sel" } else { "" },
                id = esc(&r.run_id),
                idu = url_part(&r.run_id),
                t = time(&r.started_at),
                st = r.status.as_str(),
                rows = num(r.rows),
                bytes = num(r.bytes),
                err = esc(err),
            );
        }
        o.push_str("</tbody></table>\n");
    }
    o.push_str("<h2 id=\"log\">Log</h2>\n");
    match (&p.selected, &p.log) {
        (Some(id), Some(lines)) => {
            let _ = writeln!(
                o,
                "<p><small>run <code>{}</code></small></p><pre id=\"log-text\">{}</pre>",
                esc(id),
                esc(&lines.join("\n"))
            );
        }
        (Some(id), None) => {
            let _ = writeln!(
                o,
                "<p>No log for run <code>{}</code> on this instance (logs of the newest 500 runs are kept by the instance that made them).</p>",
                esc(id)
            );
        }
        (None, _) => o.push_str("<p>No runs yet.</p>\n"),
    }
    let _ = write!(
        o,
        "<h2>Committed state</h2>\n<pre id=\"state\">{}</pre>\n",
        esc(p
            .state
            .as_deref()
            .unwrap_or("none: the next run reads from the beginning"))
    );
    let _ = writeln!(o, "<script>{SCRIPT}</script></body></html>");
    o
}
