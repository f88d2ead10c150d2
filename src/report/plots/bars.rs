//! Bar figures: Figure 4's top-5 examples and confidence histogram, and per-fold accuracies.

use super::style::{DrawResult, Figure, LABEL, Mark, TICK, TITLE, color, legend};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One test image: what it is and the top-5 of two heads.
pub struct Example {
    pub title: String,
    pub heads: [Vec<(String, f32)>; 2],
}

/// Figure 4 (left): top-5 class probabilities of two heads for a few test images, a row per
/// image: class name, bar, percentage (no axes to collide).
pub struct ExamplesFigure {
    pub head_names: [String; 2],
    pub examples: Vec<Example>,
}

const ROW: i32 = 24;

impl Figure for ExamplesFigure {
    fn size(&self) -> (u32, u32) {
        (1000, 40 + (40 + 5 * ROW as u32 + 16) * self.examples.len() as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (head, body) = root.split_vertically(40);
        for (h, name) in self.head_names.iter().enumerate() {
            head.draw(&Text::new(name.clone(), (20 + 500 * h as i32, 12), ("sans-serif", TITLE).into_font().style(FontStyle::Bold)))?;
        }
        let rows = body.split_evenly((self.examples.len().max(1), 1));
        for (area, ex) in rows.iter().zip(&self.examples) {
            area.draw(&Text::new(ex.title.clone(), (20, 8), ("sans-serif", LABEL + 1)))?;
            for (h, top5) in ex.heads.iter().enumerate() {
                let x0 = 20 + 500 * h as i32;
                for (rank, (class, p)) in top5.iter().enumerate() {
                    let y = 40 + rank as i32 * ROW;
                    let name: String = class.chars().take(24).collect();
                    area.draw(&Text::new(name, (x0, y + 3), ("sans-serif", LABEL)))?;
                    let (bx, len) = (x0 + 210, (200.0 * p.clamp(0.0, 1.0)) as i32);
                    area.draw(&Rectangle::new([(bx, y + 2), (bx + 200, y + ROW - 4)], RGBColor(235, 235, 235).filled()))?;
                    area.draw(&Rectangle::new([(bx, y + 2), (bx + len.max(1), y + ROW - 4)], color(h).filled()))?;
                    area.draw(&Text::new(format!("{:.1}%", 100.0 * p), (bx + 208, y + 3), ("sans-serif", LABEL)))?;
                }
            }
        }
        Ok(())
    }
}

/// Figure 4 (right): histogram of the max class probability of two heads over a test set, the
/// two heads' bars side by side in each bin.
pub struct ConfidenceFigure {
    pub title: String,
    pub head_names: [String; 2],
    pub max_probs: [Vec<f32>; 2],
}

impl Figure for ConfidenceFigure {
    fn size(&self) -> (u32, u32) {
        (800, 520)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        const BINS: usize = 10;
        let counts: Vec<Vec<u32>> = self
            .max_probs
            .iter()
            .map(|v| {
                let mut c = vec![0; BINS];
                for &p in v {
                    c[((p * BINS as f32) as usize).min(BINS - 1)] += 1;
                }
                c
            })
            .collect();
        let top = counts.iter().flatten().copied().max().unwrap_or(1) + 1;
        let (top_area, rest) = root.split_vertically(34);
        legend(&top_area, &[(self.head_names[0].clone(), color(0), Mark::Box), (self.head_names[1].clone(), color(3), Mark::Box)])?;
        let mut chart = ChartBuilder::on(&rest)
            .caption(&self.title, ("sans-serif", TITLE))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0f32..1f32, 0u32..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_desc("max class probability (bins of 0.1)")
            .y_desc("test images")
            .y_label_formatter(&|v| format!("{v}"))
            .label_style(("sans-serif", TICK))
            .axis_desc_style(("sans-serif", LABEL))
            .draw()?;
        let w = 1.0 / BINS as f32;
        for (h, c) in [color(0), color(3)].into_iter().enumerate() {
            let bars = counts[h].iter().enumerate().map(move |(b, &n)| {
                let x = b as f32 * w + 0.05 * w + h as f32 * 0.45 * w;
                Rectangle::new([(x, 0), (x + 0.45 * w, n)], c.filled())
            });
            chart.draw_series(bars)?;
        }
        Ok(())
    }
}

/// One table row's accuracy on each held-out group: mean and 95% interval, in points.
pub struct FoldBars {
    pub row: String,
    /// Its colour ([`super::color`]).
    pub color: usize,
    pub values: Vec<(f32, f32, f32)>,
}

/// Leave-one-out tables: test top-1 per held-out group, a bar per row with its 95% interval.
pub struct FoldsFigure {
    pub groups: Vec<String>,
    pub rows: Vec<FoldBars>,
}

impl Figure for FoldsFigure {
    fn size(&self) -> (u32, u32) {
        (1200, 480)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (top_area, rest) = root.split_vertically(40);
        let items: Vec<_> = self.rows.iter().map(|r| (r.row.clone(), color(r.color), Mark::Box)).collect();
        legend(&top_area, &items)?;
        // Bars start at 0: their lengths are the accuracies.
        let y0 = 0f32;
        let n = self.groups.len();
        let mut chart = ChartBuilder::on(&rest).margin(12).x_label_area_size(44).y_label_area_size(56).build_cartesian_2d(0f32..n as f32, y0..100f32)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(0)
            .x_desc("held-out group (the test split of its fold)")
            .y_desc("test top-1 (%)")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", TICK))
            .axis_desc_style(("sans-serif", LABEL))
            .draw()?;
        let k = self.rows.len().max(1) as f32;
        for (g, name) in self.groups.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(g as f32 + 0.5, y0));
            let style = ("sans-serif", TICK).into_text_style(root).pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(name.clone(), (x, y + 6), style))?;
        }
        for (i, r) in self.rows.iter().enumerate() {
            let c = color(r.color);
            for (g, &(m, lo, hi)) in r.values.iter().enumerate() {
                let (x, w) = (g as f32 + 0.1 + 0.8 * i as f32 / k, 0.8 / k);
                chart.draw_series([Rectangle::new([(x, y0), (x + 0.9 * w, m.max(y0))], c.filled())])?;
                let mid = x + 0.45 * w;
                chart.draw_series([PathElement::new([(mid, lo.max(y0)), (mid, hi)], BLACK.stroke_width(2))])?;
            }
        }
        Ok(())
    }
}
