//! `report.html`: one self-contained page: run card and summary first, then the tables with
//! their footnotes, the figures (SVG inline, thumbnails as data: URIs) and the configuration.

use super::card;
use super::escape::escape;
use super::stats::FigureStats;
use crate::experiments::{COLUMNS, Table};
use anyhow::Result;
use std::path::Path;

/// Text with `code` spans (Markdown backticks) as <code>.
fn inline_code(s: &str) -> String {
    escape(s).split('`').enumerate().map(|(i, part)| if i % 2 == 1 { format!("<code>{part}</code>") } else { part.to_string() }).collect()
}

/// Rows of `t` that are the same runs as a row of an earlier table (the same folder).
fn shared_rows(t: &Table, earlier: &[&Table]) -> Vec<(String, String, String)> {
    t.rows
        .iter()
        .filter_map(|r| earlier.iter().find_map(|e| e.rows.iter().find(|x| x.key == r.key).map(|x| (r.row.clone(), x.row.clone(), e.title.clone()))))
        .collect()
}

fn table_html(t: &Table, id: &str, earlier: &[&Table]) -> String {
    let (head, rows) = t.cells();
    let shared = shared_rows(t, earlier);
    let mut s = format!("<h3 id=\"{id}\">{}</h3>\n<div class=\"scroll\"><table class=\"results\">\n<tr>", inline_code(&t.title));
    head.iter().for_each(|h| s += &format!("<th>{}</th>", escape(h)));
    s += "</tr>\n";
    for r in rows {
        let mark = if shared.iter().any(|(row, _, _)| *row == r[0]) { "<sup>†</sup>" } else { "" };
        s += &format!("<tr><td>{}{mark}</td>", escape(&r[0]));
        r[1..].iter().for_each(|c| s += &format!("<td>{}</td>", escape(c)));
        s += "</tr>\n";
    }
    s += "</table></div>\n";
    s += &format!("<p class=\"note\">{}</p>\n", escape(&t.footnote()));
    for (row, other, title) in &shared {
        // `Ablation (Table 2) on `cache`: ...` is named by its part before ` on `.
        let table = title.split(" on `").next().unwrap_or(title);
        s += &format!("<p class=\"note\">† {}: the same runs as the row {} of {} (trained once).</p>\n", escape(row), escape(other), escape(table));
    }
    let defs: String =
        COLUMNS.iter().filter(|(c, _)| head.iter().any(|h| h.starts_with(c))).map(|(c, d)| format!("<dt>{}</dt><dd>{}</dd>", escape(c), escape(d))).collect();
    s += &format!("<details><summary>What each column means</summary><dl class=\"defs\">{defs}</dl></details>\n");
    s + &per_run(t)
}

/// Every run's test top-1 and top-5 (fold × seed), collapsed.
fn per_run(t: &Table) -> String {
    let Some(first) = t.rows.first() else { return String::new() };
    let folds: Vec<String> = if first.folds.is_empty() { vec![String::new()] } else { first.folds.clone() };
    let mut s = String::from(
        "<details><summary>Every run: test top-1 / top-5 (%) per fold and seed</summary><div class=\"scroll\"><table class=\"runs\"><tr><th>Row</th>",
    );
    for f in &folds {
        for seed in &first.seeds {
            s += &format!("<th>{}seed {seed}</th>", if f.is_empty() { String::new() } else { format!("{} ", escape(f.trim_start_matches("fold-"))) });
        }
    }
    s += "</tr>\n";
    for r in &t.rows {
        s += &format!("<tr><td>{}</td>", escape(&r.row));
        for (a, b) in r.test_top1.iter().zip(&r.test_top5) {
            s += &format!("<td>{:.1} / {:.1}</td>", 100.0 * a, 100.0 * b);
        }
        s += "</tr>\n";
    }
    s + "</table></div></details>\n"
}

/// The figure's SVG inline with its caption, or why it was not drawn.
fn figure(dir: &Path, stem: &str, caption: &str, stats: &FigureStats) -> String {
    if let Some((_, why)) = stats.skipped.iter().find(|(s, _)| s == stem) {
        return format!("<p class=\"skipped\"><b>Not drawn:</b> {}.</p>\n", inline_code(why));
    }
    match std::fs::read_to_string(dir.join(format!("{stem}.svg"))) {
        Ok(svg) => format!("<figure>{svg}<figcaption>{}</figcaption></figure>\n", inline_code(caption)),
        Err(_) => format!("<p class=\"skipped\"><b>Not drawn</b> ({stem}).</p>\n"),
    }
}

/// Figure 4's examples: each test image, its true class and both heads' top-5 as bars.
fn examples(stats: &FigureStats) -> String {
    if stats.examples.is_empty() {
        return String::new();
    }
    let mut s = String::from("<figure class=\"examples\"><div class=\"grid\">");
    for e in &stats.examples {
        let thumb = match &e.thumbnail {
            Some(uri) => format!("<img src=\"{uri}\" alt=\"{}\" width=\"96\" height=\"96\">", escape(&e.id)),
            None => "<div class=\"nothumb\">no image</div>".into(),
        };
        let flag = if e.heads_differ { " <span class=\"differ\">top-1 differ</span>" } else { "" };
        s += &format!("<div class=\"ex\">{thumb}<div><b>{}</b>{flag}<br><small>{}</small>", escape(&e.true_class), escape(&e.id));
        for (h, name) in ["Baseline", "CDR head (MARNet)"].iter().enumerate() {
            s += &format!("<div class=\"head\">{name}</div>");
            for (class, p) in &e.heads[h] {
                let right = if *class == e.true_class { " right" } else { "" };
                s += &format!(
                    "<div class=\"bar{right}\"><span class=\"name\">{}</span><span class=\"track\"><span style=\"width:{:.0}%\"></span></span><span class=\"pct\">{:.1}%</span></div>",
                    escape(class),
                    100.0 * p,
                    100.0 * p
                );
            }
        }
        s += "</div></div>";
    }
    s + &format!(
        "</div><figcaption>Top-5 class probabilities of the baseline and of the CDR head (green: the true class; bars on a 0-100% scale). The CDR head is the classifier on \
         MARNet's reconstruction x_CDR alone (the table's \"heads EMA / CDR\" column), not the fused output of its Acc-1. {}.</figcaption></figure>\n",
        escape(&stats.examples_rule)
    )
}

/// The training settings and MARNet's model settings, what differs from the defaults first.
fn configuration(tables: &[(String, Table)], demo: Option<&serde_json::Value>) -> Result<String> {
    let Some((_, t)) = tables.first() else { return Ok(String::new()) };
    // The seed is each run's (the run card lists them); with folds, validation is the fold's,
    // not `val_fraction` of train.
    let folds = t.fold_val.is_some();
    // val_fraction carves validation out of train only when the cache has no val split.
    let own_val = folds || t.card.as_ref().is_some_and(|c| c.splits.iter().any(|(s, _)| s == "val"));
    let shown = |mut v: serde_json::Value| -> serde_json::Value {
        if let Some(o) = v.as_object_mut() {
            o.remove("seed");
            if own_val {
                o.remove("val_fraction");
            }
        }
        v
    };
    let train = shown(serde_json::to_value(&t.train)?);
    let train_default = shown(serde_json::to_value(crate::config::TrainConfig::default())?);
    let model = t.rows.iter().find(|r| r.key == "marnet").or(t.rows.last()).map(|r| &r.config);
    let mut differs = diff("training", &train, &train_default);
    if let Some(m) = model {
        let default = crate::options::defaults::<crate::model::marnet::ModelOptions>().config(m.variant, m.dv, m.ds, m.classes);
        differs.extend(diff("model", &serde_json::to_value(m)?, &serde_json::to_value(default)?));
    }
    let mut s = String::from("<details id=\"config\"><summary>Configuration (what differs from the defaults, then all of it)</summary>\n");
    s += &match differs.is_empty() {
        true => "<p>Every setting is the default.</p>".into(),
        false => format!("<ul>{}</ul>", differs.iter().map(|d| format!("<li>{}</li>", escape(d))).collect::<String>()),
    };
    let note = match (folds, own_val) {
        (true, _) => " (seeds and each fold's validation: see the run card)",
        (false, true) => " (seeds: see the run card; validation: the cache's val split)",
        _ => " (seeds: see the run card)",
    };
    s += &format!("<h4>Training{note}</h4><pre>{}</pre>\n", escape(&serde_json::to_string_pretty(&train)?));
    if let Some(m) = model {
        s += &format!(
            "<h4>Model (the MARNet row; other rows change only its variant or alignment loss)</h4><pre>{}</pre>\n",
            escape(&serde_json::to_string_pretty(m)?)
        );
    }
    if let Some(d) = demo {
        let mut d = d.clone();
        if let Some(o) = d.as_object_mut() {
            ["train", "model", "command"].iter().for_each(|k| _ = o.remove(*k));
        }
        s += &format!("<h4>demo.json (without the settings above)</h4><pre>{}</pre>\n", escape(&serde_json::to_string_pretty(&d)?));
    }
    Ok(s + "</details>\n")
}

/// `training.epochs: 2 (default 30)` for every leaf of `now` that differs from `default`.
fn diff(prefix: &str, now: &serde_json::Value, default: &serde_json::Value) -> Vec<String> {
    match (now, default) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            a.iter().flat_map(|(k, v)| diff(&format!("{prefix}.{k}"), v, b.get(k).unwrap_or(&serde_json::Value::Null))).collect()
        }
        (a, b) if a != b => vec![format!("{prefix}: {a} (default {b})")],
        _ => vec![],
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;font-size:15px;line-height:1.45;max-width:1360px;margin:1em auto;padding:0 1em;color:#222}\
h1{font-size:1.6em;margin:.2em 0}h2{margin-top:1.6em;border-bottom:1px solid #ddd}\
nav{font-size:.92em}nav a{margin-right:1em}\
.card{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:.2em 2em;margin:.4em 0}.card div{display:flex;gap:.6em}\
.card dt{font-weight:600;min-width:6.5em}.card dd{margin:0;overflow-wrap:anywhere}\
#run-card h2,#summary h2{margin-top:.6em}#summary ul{margin:.3em 0}\
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #bbb;padding:3px 5px;text-align:right;font-size:13px}\
td{white-space:nowrap}th{background:#f3f3f3;vertical-align:bottom}td:first-child,th:first-child{text-align:left}\
caption{text-align:left;font-size:.92em;color:#444;caption-side:top;padding-bottom:.3em}\
.note{font-size:.9em;color:#444;margin:.3em 0}.skipped{background:#fff6e0;padding:.5em .8em}\
dl.defs dt{font-weight:600}dl.defs dd{margin:0 0 .4em 1.2em}pre{background:#f4f4f4;padding:8px;overflow:auto;font-size:13px}\
figure{margin:1em 0}svg{max-width:100%;height:auto}figcaption{font-size:.92em;color:#333}\
.examples .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1em}\
.ex{display:flex;gap:1em;border:1px solid #ddd;padding:.6em}.ex img,.nothumb{width:96px;height:96px;flex:none;image-rendering:auto}\
.nothumb{background:#eee;color:#777;display:flex;align-items:center;justify-content:center;font-size:12px}\
.ex>div{flex:1;min-width:0}.head{font-weight:600;margin-top:.4em;font-size:.9em}.differ{background:#ffe3e3;font-size:.8em;padding:0 .3em}\
.bar{display:flex;align-items:center;gap:.5em;font-size:13px}.bar .name{width:13em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}\
.track{flex:1;background:#eee;height:11px}.track span{display:block;height:11px;background:#1f77b4}.bar.right .track span{background:#2ca02c}\
.bar .pct{width:3.6em;text-align:right}\
@page{size:A4 landscape;margin:12mm}\
@media print{body{max-width:none;font-size:10pt}nav{display:none}.scroll{overflow:visible}td,th{font-size:8pt;padding:2px 4px}\
h2,h3,h4{break-after:avoid}figure,table,.ex,.card{break-inside:avoid}figure svg{max-height:165mm;width:auto}}";

/// Printing opens every collapsed section (a printed page cannot be clicked).
const SCRIPT: &str = "addEventListener('beforeprint',()=>document.querySelectorAll('details').forEach(d=>d.open=true));";

/// Writes `dir/report.html`.
pub fn write(dir: &Path, tables: &[(String, Table)], stats: &FigureStats, demo: Option<&serde_json::Value>) -> Result<()> {
    let dataset = tables.iter().find_map(|(_, t)| t.card.as_ref().map(|c| c.dataset.clone()));
    let mut body = format!("<h1>MARNet report{}</h1>\n", dataset.map(|d| format!(": {}", escape(&d))).unwrap_or_default());
    let mut toc = vec![("run-card", "Run card"), ("summary", "Summary"), ("results", "Results")];
    toc.extend([("fig3", "Figure 3: t-SNE"), ("fig4", "Figure 4: confidence"), ("curves", "Training curves")]);
    if !stats.skipped.iter().any(|(s, _)| s == "folds") {
        toc.push(("folds", "Per held-out group"));
    }
    toc.push(("config", "Configuration"));
    body += &format!("<nav>{}</nav>\n", toc.iter().map(|(id, name)| format!("<a href=\"#{id}\">{name}</a>")).collect::<String>());
    body += &card::run_card(tables, demo);
    body += &card::summary(tables);
    body += "<h2 id=\"results\">Results (test split, model selected on val)</h2>\n";
    let mut earlier: Vec<&Table> = vec![];
    for (name, t) in tables {
        body += &table_html(t, name, &earlier);
        earlier.push(t);
    }
    body += "<h2 id=\"fig3\">Figure 3: t-SNE of x_v and x_CDR</h2>\n";
    let note = std::fs::read_to_string(dir.join("fig3_tsne.txt")).unwrap_or_default();
    let method = if super::tsne::exact(stats.tsne_points) { "exact t-SNE" } else { "Barnes-Hut t-SNE (theta 0.5)" };
    let caption = format!(
        "{method} (bhtsne crate), seeded start; colours are classes. k-NN purity: the share of each point's k nearest neighbours in the layout that are of its class, averaged (1 = classes apart). {note}."
    );
    body += &figure(dir, "fig3_tsne", &caption, stats);
    body += "<h2 id=\"fig4\">Figure 4: confidence of the baseline and of the CDR head</h2>\n";
    body += &examples(stats);
    let means = match (stats.mean_max_prob_baseline, stats.mean_max_prob_cdr) {
        (Some(b), Some(c)) => format!(" Mean max probability: baseline {b:.3}, CDR head {c:.3}."),
        _ => String::new(),
    };
    body += &figure(
        dir,
        "fig4_confidence",
        &format!(
            "Histogram of the max class probability over the same test images as the examples above ({}), bins of 0.1, the two heads side by side.{means}",
            escape(&stats.examples_source)
        ),
        stats,
    );
    body += "<h2 id=\"curves\">Training curves</h2>\n";
    body += &figure(
        dir,
        "curves",
        "Loss terms per epoch of each row (a term has one colour in every panel and every report; a log axis where terms differ tenfold), and val top-1 of every row: \
         mean lines, bands ± one std over all runs (seeds and folds). Terms: ce, cross-entropy of the visual classifier (baseline); ce_ema, ce_cdr, ce_fused, \
         cross-entropy of the EMA head, the CDR head and the fused classifier; mse, the CDR's reconstruction error of x_s (weighted by gamma); the alignment \
         loss, the row's (ITA, SDM, TEAM, SWD, SSAN or CDD).",
        stats,
    );
    if !stats.skipped.iter().any(|(s, _)| s == "folds") {
        body += "<h2 id=\"folds\">Accuracy per held-out group</h2>\n";
        body += &figure(
            dir,
            "folds",
            "Test top-1 of each row on each held-out group (its fold's test split), mean over seeds, with the 95% Wilson interval over that fold's test images.",
            stats,
        );
    }
    body += "<h2>Configuration</h2>\n";
    body += &configuration(tables, demo)?;
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>MARNet report</title>\n<style>{STYLE}</style><script>{SCRIPT}</script></head>\n<body>\n{body}</body></html>\n"
    );
    crate::fsutil::write_atomic(&dir.join("report.html"), page.as_bytes())
}
