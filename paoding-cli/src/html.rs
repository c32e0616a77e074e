//! `paoding report FIT.json [--sweep sweep.csv|sweep.json] -o report.html`: one self-contained
//! HTML page — inline CSS and inline SVG, no script, no external resource — with, per board of
//! a fit report (schema `paoding.fit/3` or `/2`, or every board of `paoding.fit-fleet/3` or `/2`), the verdict,
//! the constraints with their headroom, the per-layer widths before and after, and the
//! fidelity; and, with `--sweep`, the sweep chart and its table. Readable offline.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::CliError;
use crate::sweep::SweepReport;

/// Arguments of `paoding report`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// A fit report (`paoding fit --report r.json`; schema paoding.fit/3 or paoding.fit-fleet/3; version 2 is read too).
    pub fit_report: PathBuf,
    /// A sweep to chart (`paoding sweep --csv s.csv` or `--json > s.json`).
    #[arg(long)]
    pub sweep: Option<PathBuf>,
    /// Where to write the page (.html).
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Escape text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.3em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{font-size:1.1em;margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.3em .7em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}
.muted{color:#666;font-size:.9em}.status{display:inline-block;padding:.1em .6em;border-radius:.8em;color:#fff}
.status.ok{background:#1a7f37;color:#fff}.status.bad{background:#c62828;color:#fff}
.bar{vertical-align:middle;margin-left:.5em}
svg{max-width:100%;height:auto}
code{background:#f4f4f4;padding:0 .3em}
";

fn num(v: &Value) -> String {
    match v {
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => group(i),
            (None, Some(f)) => format!("{f}"),
            _ => n.to_string(),
        },
        Value::Null => "-".into(),
        Value::String(s) => escape(s),
        other => escape(&other.to_string()),
    }
}

/// `1234567` → `1 234 567` (thin spaces), for tables.
fn group(i: i64) -> String {
    let digits = i.unsigned_abs().to_string();
    let mut out = String::new();
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k).is_multiple_of(3) {
            out.push('\u{2009}');
        }
        out.push(c);
    }
    if i < 0 {
        format!("−{out}")
    } else {
        out
    }
}

fn unit(resource: &str) -> &'static str {
    match resource {
        "flash" | "ram" => " B",
        _ => "",
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.2} %", 100.0 * v))
}

/// Width of a budget bar, in pixels.
const BAR_WIDTH: f64 = 120.0;

/// A budget bar: the share of the budget used, filled from the left (an inline SVG, so that
/// no table alignment can move it), red beyond the budget.
fn bar(share: f64, fits: bool) -> String {
    format!(
        "<svg class=\"bar\" width=\"{BAR_WIDTH}\" height=\"10\" viewBox=\"0 0 {BAR_WIDTH} 10\" role=\"img\" aria-label=\"{:.0} % of the budget\">\
         <rect x=\"0\" y=\"0\" width=\"{BAR_WIDTH}\" height=\"10\" fill=\"#e8eef5\"/>\
         <rect x=\"0\" y=\"0\" width=\"{:.0}\" height=\"10\" fill=\"{}\"/></svg>",
        100.0 * share,
        BAR_WIDTH * share.clamp(0.0, 1.0),
        if fits { "#1f77b4" } else { "#c62828" }
    )
}

/// A short layer name for a table, the full one as its tooltip.
fn layer_cell(short: &str, full: &str) -> String {
    format!("<td title=\"{}\">{}</td>", escape(full), escape(short))
}

/// One board of a fit report as HTML.
fn board(out: &mut String, r: &Value) {
    let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
    let status = s("status");
    let ok = matches!(status.as_str(), "fits-unpruned" | "pruned");
    let _ = writeln!(
        out,
        "<h2>{} <span class=\"status {}\">{}</span></h2>\n<p>{}</p>",
        escape(&s("profile")),
        if ok { "ok" } else { "bad" },
        escape(&status),
        escape(&s("message"))
    );
    if let Some(dtype) = r["dtype"].as_str() {
        let _ = writeln!(
            out,
            "<p>Stored as <b>{}</b>{}.</p>",
            escape(dtype),
            match s("dtype_reason").as_str() {
                "" => String::new(),
                why => format!(" ({})", escape(why)),
            }
        );
    }
    if let Some(q) = r["quantization"].as_object() {
        let cost = &q["cost"];
        let _ = writeln!(
            out,
            "<p>Quantization: {}. Alone, before any pruning, it keeps {:.2} % top-1 agreement with the f32 original (relative L2 error {:.4}).</p>",
            escape(q["calibration"].as_str().unwrap_or("")),
            100.0 * cost["agreement"].as_f64().unwrap_or(0.0),
            cost["relative_l2"].as_f64().unwrap_or(0.0)
        );
    }
    let _ = writeln!(
        out,
        "<h3>Constraints</h3>\n<table><tr><th>resource</th><th>original</th><th>result</th><th>budget</th><th>headroom</th><th>use of budget</th><th>verdict</th></tr>"
    );
    for c in r["constraints"].as_array().into_iter().flatten() {
        let res = c["resource"].as_str().unwrap_or("");
        let key = match res {
            "flash" => "flash_bytes",
            "ram" => "ram_bytes",
            _ => "macs",
        };
        let used = c["used"].as_f64().unwrap_or(0.0);
        let budget = c["budget"].as_f64().unwrap_or(0.0);
        let share = if budget > 0.0 { used / budget } else { 0.0 };
        let fits = c["fits"].as_bool().unwrap_or(false);
        let u = unit(res);
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}{u}</td><td>{}{u}</td><td>{}{u}</td><td class=\"{}\">{}{u}</td>\
             <td>{:.1} % {}</td><td class=\"{}\">{}</td></tr>",
            escape(res),
            num(&r["original"][key]),
            num(&c["used"]),
            num(&c["budget"]),
            if fits { "ok" } else { "bad" },
            num(&c["headroom"]),
            100.0 * share,
            bar(share, fits),
            if fits { "ok" } else { "bad" },
            if fits { "fits" } else { "OVER" }
        );
    }
    let _ = writeln!(out, "</table>");
    let _ = writeln!(
        out,
        "<p class=\"muted\">Flash is the exact size of the <code>.pdg</code> blob the runtime loads, RAM the activation arena of its static memory plan, MACs those of the pruned graph. Search: step {} of {} single-unit removals, {} evaluations; binding resource {}.</p>",
        num(&r["step"]),
        num(&r["total_steps"]),
        num(&r["evaluations"]),
        num(&r["binding"])
    );
    if let Some(layers) = r["layers"].as_array().filter(|l| !l.is_empty()) {
        let _ = writeln!(
            out,
            "<h3>Layers</h3>\n<table><tr><th>layer</th><th>units before</th><th>units after</th><th>removed</th></tr>"
        );
        let full: Vec<&str> = layers
            .iter()
            .map(|l| l["layer"].as_str().unwrap_or(""))
            .collect();
        for ((l, short), full) in layers
            .iter()
            .zip(crate::names::short_names(&full))
            .zip(&full)
        {
            let (b, a) = (
                l["before"].as_f64().unwrap_or(0.0),
                l["after"].as_f64().unwrap_or(0.0),
            );
            let removed = if b > 0.0 { 1.0 - a / b } else { 0.0 };
            let _ = writeln!(
                out,
                "<tr>{}<td>{}</td><td>{}</td><td>{:.1} %</td></tr>",
                layer_cell(&short, full),
                num(&l["before"]),
                num(&l["after"]),
                100.0 * removed
            );
        }
        let _ = writeln!(out, "</table>");
    }
    let f = &r["fidelity"];
    if f.is_object() {
        let fi = &f["fidelity"];
        let data_free = f["data_free"].as_bool().unwrap_or(false);
        let classifier = f["task"]["kind"].as_str() == Some("classifier");
        let _ = writeln!(
            out,
            "<h3>Fidelity</h3>\n<p>{} {}:</p>\n<table><tr><th>measure</th><th>value</th></tr>",
            if data_free {
                "Estimated without data on"
            } else {
                "Measured on"
            },
            escape(f["inputs"].as_str().unwrap_or(""))
        );
        if classifier {
            let interval = &fi["agreement_interval"];
            let plausible = &f["plausible_on_real_data"];
            let real = if plausible.is_array() {
                format!(
                    "; on real inputs expect {} – {}",
                    pct(plausible[0].as_f64()),
                    pct(plausible[1].as_f64())
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "<tr><td>top-1 agreement with the original{}</td><td>{} (95 % interval {} – {}{})</td></tr>\
                 <tr><td>KL mean / max (nats)</td><td>{:.4} / {:.4}</td></tr>",
                if data_free { ", estimated" } else { "" },
                pct(fi["agreement"].as_f64()),
                pct(interval[0].as_f64()),
                pct(interval[1].as_f64()),
                escape(&real),
                fi["mean_kl"].as_f64().unwrap_or(f64::NAN),
                fi["max_kl"].as_f64().unwrap_or(f64::NAN)
            );
        }
        let _ = writeln!(
            out,
            "<tr><td>relative L2 error (SNR)</td><td>{:.4} ({:.1} dB)</td></tr>",
            fi["relative_l2"].as_f64().unwrap_or(f64::NAN),
            fi["snr_db"].as_f64().unwrap_or(f64::NAN)
        );
        if f["accuracy_before"].is_number() {
            let _ = writeln!(
                out,
                "<tr><td>accuracy before → after</td><td>{} → {}</td></tr>",
                pct(f["accuracy_before"].as_f64()),
                pct(f["accuracy_after"].as_f64())
            );
        }
        let rb = &f["robustness"];
        if rb.is_object() {
            let _ = writeln!(
                out,
                "<tr><td>FGSM robustness at ε = {:.3}: original → pruned (retained)</td><td>{} → {} ({})</td></tr>",
                rb["epsilon"].as_f64().unwrap_or(f64::NAN),
                pct(rb["original"].as_f64()),
                pct(rb["pruned"].as_f64()),
                pct(rb["retention"].as_f64())
            );
        }
        let _ = writeln!(out, "</table>");
        for w in f["warnings"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "<p class=\"bad\">Warning: {}</p>",
                escape(w.as_str().unwrap_or(""))
            );
        }
    }
    shortfalls(out, r);
}

/// Why a board cannot fit, as the text report says it: per failing resource, the use at
/// maximum pruning, the budget, by how much it is over, and what dominates it.
fn shortfalls(out: &mut String, r: &Value) {
    let Some(list) = r["shortfalls"].as_array().filter(|l| !l.is_empty()) else {
        return;
    };
    let _ = writeln!(
        out,
        "<h3>Why it cannot fit</h3>\n<table><tr><th>resource</th><th>use at maximum pruning</th><th>budget</th><th>over by</th><th>dominated by</th></tr>"
    );
    let full: Vec<&str> = list
        .iter()
        .flat_map(|s| s["dominated_by"].as_array().into_iter().flatten())
        .map(|d| d[0].as_str().unwrap_or(""))
        .collect();
    let mut short = crate::names::short_names(&full)
        .into_iter()
        .zip(full.clone());
    for s in list {
        let res = s["resource"].as_str().unwrap_or("");
        let u = unit(res);
        let (used, budget) = (
            s["used"].as_i64().unwrap_or(0),
            s["budget"].as_i64().unwrap_or(0),
        );
        let dominated: Vec<String> = s["dominated_by"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                let (name, full) = short.next().unwrap_or_default();
                format!(
                    "<span title=\"{}\">{}</span> ({}{u})",
                    escape(full),
                    escape(&name),
                    num(&d[1])
                )
            })
            .collect();
        let floor = s["floor"]
            .as_str()
            .map(|f| format!("<br><span class=\"bad\">{}</span>", escape(f)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}{u}</td><td>{}{u}</td><td class=\"bad\">{}{u}</td><td>{}{floor}</td></tr>",
            escape(res),
            group(used),
            group(budget),
            group(used - budget),
            dominated.join(", ")
        );
    }
    let _ = writeln!(out, "</table>");
}

fn sweep_section(out: &mut String, sweep: &SweepReport) -> Result<(), CliError> {
    let svg = crate::chart::sweep_svg(sweep)?;
    let _ = writeln!(out, "<h2>Pruning sweep</h2>");
    if !sweep.inputs.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"muted\">Measured on {}. Refit on {}.</p>",
            escape(&sweep.inputs),
            escape(&sweep.refit_probes)
        );
    }
    // The SVG document without its XML declaration, inline.
    let body = svg.find("<svg").map_or(svg.as_str(), |i| &svg[i..]);
    let _ = writeln!(out, "<figure>{body}</figure>");
    let quality = if sweep.has_accuracy() {
        "accuracy"
    } else {
        "agreement"
    };
    let _ = writeln!(
        out,
        "<table><tr><th>method</th><th>ratio</th><th>params</th><th>removed</th><th>flash</th><th>RAM</th><th>MACs</th><th>{quality}</th><th>FGSM ε={}</th><th>robustness kept</th></tr>",
        sweep.fgsm_eps
    );
    for p in std::iter::once(&sweep.original).chain(&sweep.points) {
        let q = if sweep.has_accuracy() {
            p.accuracy
        } else {
            Some(p.agreement)
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1} %</td><td>{} B</td><td>{} B</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&p.method),
            p.ratio,
            group(p.params as i64),
            100.0 * p.params_removed,
            group(p.flash_bytes as i64),
            group(p.ram_bytes as i64),
            group(p.macs as i64),
            pct(q),
            pct(p.robustness),
            pct(p.robustness_retention)
        );
    }
    let _ = writeln!(out, "</table>");
    Ok(())
}

/// Build the page from a fit report (parsed JSON) and an optional sweep.
pub fn render(fit: &Value, sweep: Option<&SweepReport>) -> Result<String, CliError> {
    let boards: Vec<&Value> = match fit["schema"].as_str() {
        // Version 2 lacks only the dtype fields, which the page shows when present.
        Some(crate::fit::FIT_SCHEMA | "paoding.fit/2") => vec![fit],
        Some(crate::fit::FLEET_SCHEMA | "paoding.fit-fleet/2") => {
            fit["boards"].as_array().into_iter().flatten().collect()
        }
        other => {
            let found = other.map_or("no schema".to_string(), |s| format!("schema '{s}'"));
            return Err(CliError::Usage(format!(
                "not a paoding fit report: {found} (expected {} or {})",
                crate::fit::FIT_SCHEMA,
                crate::fit::FLEET_SCHEMA
            )));
        }
    };
    let model = boards
        .first()
        .and_then(|b| b["model"].as_str())
        .unwrap_or("");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>paoding report: {}</title><style>{CSS}</style></head><body>",
        escape(model)
    );
    let _ = writeln!(
        out,
        "<h1>paoding report</h1>\n<p>Model <code>{}</code>, {} board{}.</p>",
        escape(model),
        boards.len(),
        if boards.len() == 1 { "" } else { "s" }
    );
    for b in &boards {
        board(&mut out, b);
    }
    if let Some(s) = sweep {
        let original = boards.first().map_or(&Value::Null, |b| &b["original"]);
        check_same_model(model, original, s)?;
        // A sweep read from CSV does not know its model: it is the report's.
        let mut s = s.clone();
        if s.model.is_empty() {
            s.model = model.to_string();
        }
        sweep_section(&mut out, &s)?;
    }
    let _ = writeln!(
        out,
        "<p class=\"muted\">Generated by paoding {}. This page is self-contained: no script, no external resource.</p>\n</body></html>",
        env!("CARGO_PKG_VERSION")
    );
    Ok(out)
}

/// Refuse a sweep of another model than the fit report's: their original models must have
/// the same exact flash, RAM and MACs (a CSV sweep does not name its model, and paths to
/// the same file may differ).
fn check_same_model(model: &str, original: &Value, sweep: &SweepReport) -> Result<(), CliError> {
    let o = &sweep.original;
    let fit = [
        original["flash_bytes"].as_u64(),
        original["ram_bytes"].as_u64(),
        original["macs"].as_u64(),
    ];
    if fit == [Some(o.flash_bytes), Some(o.ram_bytes), Some(o.macs)] {
        return Ok(());
    }
    let describe = |v: [Option<u64>; 3]| {
        let n = |x: Option<u64>| x.map_or("?".to_string(), |x| x.to_string());
        format!("flash {} B, RAM {} B, {} MACs", n(v[0]), n(v[1]), n(v[2]))
    };
    let sweep_model = if sweep.model.is_empty() {
        "the sweep's model"
    } else {
        sweep.model.as_str()
    };
    Err(CliError::Usage(format!(
        "the sweep is of another model: {model} uses {} unpruned, {sweep_model} {}",
        describe(fit),
        describe([Some(o.flash_bytes), Some(o.ram_bytes), Some(o.macs)])
    )))
}

/// Read a fit report JSON file.
pub fn read_fit_report(path: &Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{}: not JSON: {e}", path.display())))
}

/// `paoding report`: write the page; exit code 0.
pub fn run_report(args: ReportArgs) -> Result<u8, CliError> {
    crate::output::check_writable(&args.output)?;
    let fit = read_fit_report(&args.fit_report)?;
    let sweep = args.sweep.as_deref().map(SweepReport::read).transpose()?;
    let page = render(&fit, sweep.as_ref())
        .map_err(|e| CliError::Usage(format!("{}: {e}", args.fit_report.display())))?;
    crate::output::write_all(&[(args.output.clone(), page.into_bytes())])?;
    crate::output::print(&format!("wrote {}\n", args.output.display()))?;
    Ok(0)
}
