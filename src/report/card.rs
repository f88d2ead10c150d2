//! The top of the report: the run card (what was run, where, how long, on what data) and the
//! summary in words (which rows differ from the baseline and +EMA, beside the paper's numbers).

use super::escape::escape;
use crate::experiments::{ResultRow, RunCard, Table};
use crate::features::folds::FoldVal;
use crate::stats::{PairedTest, p_value};
use crate::words::{count, duration};

const NOT_RECORDED: &str = "<em>not recorded</em>";

/// The paper's top-1 difference from its ViT-B/16 baseline (points) on Vireo-Food172 and
/// Ingredient-101, by row key: Table 2 (+EMA is ITA, +Fusion is MARNet) and Table 1.
fn paper_delta(key: &str) -> Option<(f64, f64)> {
    // Baseline (ViT-B/16): 85.4 and 88.3.
    let (v, i) = match key {
        "ema" => (87.8, 88.8),
        "mlp" => (85.5, 86.4),
        "cdr" => (86.9, 88.0),
        "marnet" => (88.1, 89.0),
        "align-swd" => (87.6, 88.6),
        "align-ssan" => (87.1, 88.5),
        "align-cdd" => (86.0, 88.4),
        "align-sdm" => (87.6, 88.7),
        "align-team" | "align-team-tokens" => (87.6, 88.7),
        _ => return None,
    };
    Some((v - 85.4, i - 88.3))
}

/// `lower than the baseline by 4.80 points (p < 0.001)`, or `no different from ...` when p ≥ 0.05
/// (points to two decimals, as in the tables).
fn verdict(t: &PairedTest, than: &str) -> String {
    let p = escape(&p_value(t.p()));
    match (t.p() < 0.05, t.diff > 0.0) {
        (false, _) => format!("no different from {than} ({:+.2} points, {p})", 100.0 * t.diff),
        (true, true) => format!("<b>higher</b> than {than} by {:.2} points ({p})", 100.0 * t.diff),
        (true, false) => format!("<b>lower</b> than {than} by {:.2} points ({p})", -100.0 * t.diff),
    }
}

fn row_sentence(r: &ResultRow, ema: &str) -> Option<String> {
    if r.key == "baseline" {
        return None; // +EMA's sentence says it
    }
    let mut parts = vec![];
    if let Some(t) = &r.vs_baseline {
        parts.push(verdict(t, "the baseline"));
    }
    if let Some(t) = &r.vs_ema {
        parts.push(verdict(t, ema));
    }
    (!parts.is_empty()).then(|| format!("<li><b>{}</b>: {}.</li>", escape(&r.row), parts.join("; ")))
}

/// Test images under which the summary says the test set is small.
const SMALL_TEST: usize = 200;

/// A fold's test images under which the summary names it: it weighs as much as any other fold.
const SMALL_FOLD: usize = 30;

fn top1(r: &ResultRow) -> f64 {
    100.0 * crate::stats::mean_std(&r.test_top1).0
}

/// The summary: the best row, MARNet against the baseline, rows near chance; per row, the
/// difference from the baseline and +EMA in words; then ours beside the paper's, as
/// differences from each one's baseline.
pub fn summary(tables: &[(String, Table)]) -> String {
    let mut s = String::from("<section id=\"summary\"><h2>Summary</h2>\n");
    // Each row once (Table 1's ITA, baseline and MARNet rows are Table 2's runs).
    let mut seen = vec![];
    let rows: Vec<&ResultRow> = tables
        .iter()
        .flat_map(|(_, t)| &t.rows)
        .filter(|r| {
            !seen.contains(&r.key) && {
                seen.push(r.key.clone());
                true
            }
        })
        .collect();
    let ema = rows.iter().find(|r| r.key == "ema").map_or("+EMA".to_string(), |r| if r.row == "+EMA" { r.row.clone() } else { format!("{} (+EMA)", r.row) });
    let mut head = vec![];
    if let Some(best) = rows.iter().max_by(|a, b| top1(a).total_cmp(&top1(b))) {
        head.push(format!("The highest test top-1 is {}'s, {:.2}%.", escape(&best.row), top1(best)));
    }
    if let Some(m) = rows.iter().find(|r| r.key == "marnet") {
        let mut line = format!("MARNet's is {:.2}%", top1(m));
        if let (Some(b), Some(t)) = (rows.iter().find(|r| r.key == "baseline"), &m.vs_baseline) {
            line += &format!(" against the baseline's {:.2}%: {}", top1(b), verdict(t, "the baseline"));
        }
        head.push(line + ".");
    }
    // Rows that learned little: under twice chance, or under a quarter of the best row's top-1.
    if let (Some(classes), Some(best)) = (rows.first().map(|r| r.config.classes).filter(|&c| c > 1), rows.iter().map(|r| top1(r)).reduce(f64::max)) {
        let floor = (200.0 / classes as f64).max(best / 4.0);
        let weak: Vec<String> = rows.iter().filter(|r| top1(r) < floor).map(|r| escape(&r.row)).collect();
        if !weak.is_empty() {
            head.push(format!(
                "<b>Learned little</b> (test top-1 under {floor:.1}%: twice chance, 2/{classes}, or a quarter of the best row's): {}. \
                 Their differences say more about this training budget than about the methods; train longer (--epochs) before reading them.",
                weak.join(", ")
            ));
        }
    }
    // A small test set: one image is a large step of top-1, and only large differences can show.
    if let Some(n) = rows.iter().find_map(|r| r.vs_baseline.as_ref().or(r.vs_ema.as_ref()).map(|t| t.n)).filter(|&n| n > 0 && n < SMALL_TEST) {
        head.push(format!(
            "<b>Small test set</b>: {n} test images, so one image is {:.1} points of top-1; only differences of several images can be told from chance.",
            100.0 / n as f64
        ));
    }
    // A leave-one-out fold of few test images moves the means as much as a large one.
    let folds = tables.iter().find_map(|(_, t)| Some((&t.rows.first()?.folds, &t.card.as_ref()?.fold_test_rows)));
    if let Some((names, sizes)) = folds.filter(|(names, sizes)| names.len() == sizes.len() && sizes.len() > 1) {
        let small: Vec<String> = names
            .iter()
            .zip(sizes)
            .filter(|(_, n)| **n < SMALL_FOLD)
            .map(|(f, n)| format!("<code>{}</code> has {n}", escape(f.trim_start_matches("fold-"))))
            .collect();
        if !small.is_empty() {
            let (lo, hi) = (sizes.iter().min().unwrap_or(&0), sizes.iter().max().unwrap_or(&0));
            let range = if lo == hi { format!("every fold has {lo}") } else { format!("the folds have {lo} to {hi}") };
            head.push(format!(
                "<b>Small fold{}</b>: {} test images ({range}); every fold weighs the same in Acc-1 and in the differences, so a few images there move them as much as a large fold's many.",
                if small.len() == 1 { "" } else { "s" },
                small.join(", ")
            ));
        }
    }
    s += &format!(
        "<p>{} A difference with p ≥ 0.05 (the larger of a paired bootstrap's and an exact McNemar test's, over the test images) is reported as no difference.</p>\n",
        head.join(" ")
    );
    let lines: Vec<String> = rows.iter().filter_map(|r| row_sentence(r, &ema)).collect();
    if !lines.is_empty() {
        s += &format!("<ul class=\"verdicts\">{}</ul>\n", lines.join(""));
    }
    let paper: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let (v, i) = paper_delta(&r.key)?;
            let ours = r.vs_baseline.as_ref().map_or("—".into(), |t| format!("{:+.2} ({})", 100.0 * t.diff, escape(&p_value(t.p()))));
            Some(format!("<tr><td>{}</td><td>{ours}</td><td>{v:+.1}</td><td>{i:+.1}</td></tr>", escape(&r.row)))
        })
        .collect();
    if !paper.is_empty() {
        s += "<table class=\"paper\"><caption>Top-1 difference from the baseline, in points: this run beside the paper's (its Tables 1-2, \
              ViT-B/16 baseline; the paper reports no intervals)</caption>\n\
              <tr><th>Row</th><th>this run (paired p)</th><th>paper: Vireo-Food172</th><th>paper: Ingredient-101</th></tr>\n";
        s += &paper.join("\n");
        s += "</table>\n";
    }
    s + "</section>\n"
}

fn item(k: &str, v: &str) -> String {
    format!("<div><dt>{k}</dt><dd>{v}</dd></div>")
}

/// The run card from the tables' records and, for `marnet demo`, its `demo.json`.
pub fn run_card(tables: &[(String, Table)], demo: Option<&serde_json::Value>) -> String {
    let card: Option<&RunCard> = tables.iter().find_map(|(_, t)| t.card.as_ref());
    let or_not = |v: Option<String>| v.unwrap_or_else(|| NOT_RECORDED.into());
    // One command (a demo's, or one for every table), or each table's with its name.
    let mut commands: Vec<(&str, &str)> = tables.iter().map(|(n, t)| (n.as_str(), t.command.as_str())).collect();
    if let Some(c) = demo.and_then(|d| d["command"].as_str()) {
        commands = vec![("demo", c)];
    }
    let one = commands.iter().all(|(_, c)| *c == commands[0].1);
    let cmd = match one {
        true => commands.first().map(|(_, c)| format!("<code>{}</code>", escape(c))).unwrap_or_default(),
        false => commands.iter().map(|(n, c)| format!("{n}: <code>{}</code>", escape(c))).collect::<Vec<_>>().join("<br>"),
    };
    let mut items = vec![item("Command", &cmd)];
    items.push(item("Date", &or_not(card.map(|c| escape(&c.date)))));
    items.push(item("marnet", &or_not(card.map(|c| format!("{} (commit {})", c.version, if c.commit.is_empty() { "unknown" } else { &c.commit })))));
    items.push(item("Machine", &or_not(card.map(|c| escape(&format!("{}; ran on the {}, {}", c.cpu, c.device, count(c.threads, "math thread")))))));
    let times: Vec<String> = match demo.and_then(|d| d["seconds"].as_object()) {
        Some(secs) => {
            ["extract", "ablation", "comparison", "report"].iter().filter_map(|k| Some(format!("{k} {}", duration(secs.get(*k)?.as_f64()?)))).collect()
        }
        None => tables.iter().filter_map(|(n, t)| Some(format!("{n} {}", duration(t.card.as_ref()?.wall_seconds)))).collect(),
    };
    let train: f64 = tables.iter().flat_map(|(_, t)| &t.rows).map(|r| r.train_seconds).sum();
    let mut time = if times.is_empty() { NOT_RECORDED.to_string() } else { times.join(", ") };
    // Runs an earlier command trained: the machine, threads and wall time above are not theirs.
    let (runs, reused) = tables.iter().filter_map(|(_, t)| t.card.as_ref()).fold((0, 0), |(n, r), c| (n + c.runs, r + c.reused_runs));
    if reused > 0 && demo.is_none() {
        time += &format!(" ({reused} of the {runs} runs reused from earlier commands: the machine, threads and time above are the last command's, not theirs)");
    }
    if train > 0.0 {
        time += &format!("; training steps of every run: {}", duration(train));
    }
    items.push(item("Wall time", &time));
    items.push(item(
        "Dataset",
        &or_not(card.map(|c| format!("{} ({}), cache <code>{}</code>", escape(&c.dataset), count(c.classes, "class"), escape(&c.cache)))),
    ));
    items.push(item("Encoders", &or_not(card.filter(|c| !c.encoders.is_empty()).map(|c| escape(&c.encoders)))));
    let folds = tables.iter().any(|(_, t)| t.rows.first().is_some_and(|r| !r.folds.is_empty()));
    let resplit = if folds { " (the cache's own splits; each fold re-splits them)" } else { "" };
    items.push(item("Rows", &or_not(card.map(|c| c.splits.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", ") + resplit))));
    if let Some(t) = tables.iter().map(|(_, t)| t).find(|t| t.rows.first().is_some_and(|r| !r.folds.is_empty())) {
        let folds = &t.rows[0].folds;
        let sizes = t.card.as_ref().map(|c| c.fold_test_rows.clone()).unwrap_or_default();
        let list: Vec<String> = folds
            .iter()
            .enumerate()
            .map(|(i, f)| format!("{}{}", f.trim_start_matches("fold-"), sizes.get(i).map(|n| format!(" ({n} test)")).unwrap_or_default()))
            .collect();
        let val = match t.fold_val {
            Some(FoldVal::Group) => "validation: every row of the next training group (a style not trained on)",
            _ => "validation: a seeded 20% of each fold's training rows, one image of each class in turn (in-style)",
        };
        items.push(item("Folds", &format!("leave-one-group-out, {}: {}; {val}", count(folds.len(), "fold"), escape(&list.join(", ")))));
    }
    if let Some((_, t)) = tables.first() {
        let seeds = t.rows.first().map(|r| r.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")).unwrap_or_default();
        items.push(item("Seeds", &seeds));
        items.push(item("Training", &format!("{}, batch {}, learning rate {}", count(t.train.epochs, "epoch"), t.train.batch, t.train.optim.lr)));
    }
    format!("<section id=\"run-card\"><h2>Run card</h2><dl class=\"card\">{}</dl></section>\n", items.join(""))
}
