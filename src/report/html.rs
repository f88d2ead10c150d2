//! `report.html`: one self-contained page (tables, the SVG figures inline, commands, configs).

use super::FigureStats;
use crate::experiments::Table;
use anyhow::Result;
use std::path::Path;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn table_html(t: &Table) -> String {
    let (head, rows) = t.cells();
    let mut s = format!("<h3>{}</h3>\n<table>\n<tr>", escape(&t.title));
    head.iter().for_each(|h| s += &format!("<th>{}</th>", escape(h)));
    s += "</tr>\n";
    for r in rows {
        s += "<tr>";
        r.iter().for_each(|c| s += &format!("<td>{}</td>", escape(c)));
        s += "</tr>\n";
    }
    s + "</table>\n"
}

/// The figure's SVG inline, or a note that it was not drawn.
fn figure(dir: &Path, stem: &str, caption: &str) -> String {
    match std::fs::read_to_string(dir.join(format!("{stem}.svg"))) {
        Ok(svg) => format!("<figure>{svg}<figcaption>{}</figcaption></figure>\n", escape(caption)),
        Err(_) => format!("<p><em>{stem}: not drawn.</em></p>\n"),
    }
}

/// Writes `dir/report.html`.
pub fn write(dir: &Path, tables: &[(String, Table)], stats: &FigureStats, demo: Option<&serde_json::Value>) -> Result<()> {
    let mut body = String::from("<h1>MARNet report</h1>\n");
    if let Some(d) = demo {
        body += &format!("<p>Produced by <code>{}</code>.</p>\n", escape(d["command"].as_str().unwrap_or("")));
    }
    body += "<h2>Results (test split, model selected on val, mean ± std over seeds)</h2>\n";
    for (_, t) in tables {
        body += &table_html(t);
        body += &format!("<p>Command: <code>{}</code></p>\n", escape(&t.command));
    }
    body += "<h2>Figure 3: t-SNE of x_v and x_CDR</h2>\n";
    let note = std::fs::read_to_string(dir.join("fig3_tsne.txt")).unwrap_or_default();
    body += &figure(dir, "fig3_tsne", &format!("Barnes-Hut / exact t-SNE (bhtsne crate), seeded start; colours are classes. {note}."));
    body += "<h2>Figure 4: confidence of the baseline and of the CDR head</h2>\n";
    body += &figure(dir, "fig4_examples", "Top-5 class probabilities for a few test images.");
    let means = match (stats.mean_max_prob_baseline, stats.mean_max_prob_cdr) {
        (Some(b), Some(c)) => format!(" Mean max probability: baseline {b:.3}, CDR head {c:.3}."),
        _ => String::new(),
    };
    body += &figure(dir, "fig4_confidence", &format!("Histogram of the max class probability over the test set.{means}"));
    body += "<h2>Training curves</h2>\n";
    body += &figure(dir, "curves", "Mean loss terms per epoch for each row's first seed, and val top-1.");
    if !stats.skipped.is_empty() {
        body += &format!("<p>Not drawn: {}</p>\n", escape(&stats.skipped.join("; ")));
    }
    body += "<h2>Configuration</h2>\n";
    for (name, t) in tables {
        body += &format!("<h3>{name}: training</h3><pre>{}</pre>\n", escape(&serde_json::to_string_pretty(&t.train)?));
        if let Some(r) = t.rows.last() {
            body += &format!("<h3>{name}: model ({})</h3><pre>{}</pre>\n", escape(&r.row), escape(&serde_json::to_string_pretty(&r.config)?));
        }
    }
    if let Some(d) = demo {
        body += &format!("<h3>demo</h3><pre>{}</pre>\n", escape(&serde_json::to_string_pretty(d)?));
    }
    let page = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>MARNet report</title>\n<style>\
         body{{font-family:sans-serif;max-width:1240px;margin:2em auto;padding:0 1em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:4px 10px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}pre{{background:#f4f4f4;padding:8px;overflow:auto}}\
         figure{{margin:1em 0}}svg{{max-width:100%;height:auto}}</style></head>\n<body>\n{body}</body></html>\n"
    );
    crate::fsutil::write_atomic(&dir.join("report.html"), page.as_bytes())
}
