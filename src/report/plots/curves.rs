//! Training curves: each row's loss terms, and every row's val top-1, as mean ± std bands over
//! its runs (seeds and folds).

use super::style::{DrawResult, Figure, LABEL, Mark, TICK, TITLE, color, legend};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// One named curve: per epoch, the mean and the band (mean - std, mean + std) over runs.
pub struct Band {
    pub name: String,
    /// Its colour: the same index for the same thing in every panel.
    pub color: usize,
    pub points: Vec<(f32, f32, f32, f32)>,
}

/// One panel of curves.
pub struct CurvePanel {
    pub title: String,
    pub y_desc: String,
    pub series: Vec<Band>,
}

/// Training curves: a grid of loss panels (one per row, loss terms coloured alike everywhere,
/// a log axis where the terms' scales differ tenfold), then the val top-1 of every row.
pub struct CurvesFigure {
    /// The legend of the loss panels: each term (or group of terms) and its colour.
    pub terms: Vec<(String, usize)>,
    pub panels: Vec<CurvePanel>,
    pub val: CurvePanel,
}

const PANEL_H: u32 = 300;
const VAL_H: u32 = 380;

impl Figure for CurvesFigure {
    fn size(&self) -> (u32, u32) {
        (1200, 40 + PANEL_H * self.panels.len().div_ceil(3) as u32 + 40 + VAL_H)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (top, rest) = root.split_vertically(40);
        legend(&top, &self.terms.iter().map(|(t, c)| (t.clone(), color(*c), Mark::Line)).collect::<Vec<_>>())?;
        let (grid, val_area) = rest.split_vertically(PANEL_H * self.panels.len().div_ceil(3) as u32);
        let areas = grid.split_evenly((self.panels.len().div_ceil(3).max(1), 3));
        for (area, panel) in areas.iter().zip(&self.panels) {
            let ys = || panel.series.iter().flat_map(|s| s.points.iter().flat_map(|p| [p.2, p.3]));
            let (lo, hi) = (ys().fold(f32::INFINITY, f32::min), ys().fold(f32::NEG_INFINITY, f32::max));
            let lo_pos = panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(f32::INFINITY, f32::min);
            if lo_pos > 0.0 && hi / lo_pos >= 10.0 {
                let floor = lo.max(lo_pos * 0.5) * 0.8;
                chart(area, panel, (floor..hi * 1.25).log_scale(), &format!("{} (log axis)", panel.y_desc), floor)?;
            } else {
                chart(area, panel, super::style::padded([lo, hi].into_iter()), &panel.y_desc, f32::NEG_INFINITY)?;
            }
        }
        let (val_legend, val_plot) = val_area.split_vertically(40);
        legend(&val_legend, &self.val.series.iter().map(|s| (s.name.clone(), color(s.color), Mark::Line)).collect::<Vec<_>>())?;
        let ys = || self.val.series.iter().flat_map(|s| s.points.iter().flat_map(|p| [p.2, p.3]));
        let r = super::style::padded(ys());
        chart(&val_plot, &self.val, r.start.max(0.0)..r.end.min(100.0), &self.val.y_desc, 0.0)
    }
}

/// One panel's axes, bands (cut at `floor`) and mean lines on `area`.
fn chart<DB: DrawingBackend, Y>(area: &DrawingArea<DB, Shift>, panel: &CurvePanel, y: Y, y_desc: &str, floor: f32) -> DrawResult<DB>
where
    Y: AsRangedCoord<Value = f32>,
    Y::CoordDescType: ValueFormatter<f32>,
{
    let xs = || panel.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x = xs().fold(f32::INFINITY, f32::min)..xs().fold(f32::NEG_INFINITY, f32::max).max(xs().fold(f32::INFINITY, f32::min) + 1.0);
    let mut chart =
        ChartBuilder::on(area).caption(&panel.title, ("sans-serif", TITLE)).margin(10).x_label_area_size(40).y_label_area_size(66).build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .x_labels(6)
        .y_labels(6)
        // Epochs are whole: a tick between two is left blank.
        .x_label_formatter(&|v| if (v - v.round()).abs() < 1e-3 { format!("{v:.0}") } else { String::new() })
        .x_desc("epoch")
        .y_desc(y_desc)
        .label_style(("sans-serif", TICK))
        .axis_desc_style(("sans-serif", LABEL))
        .draw()?;
    for s in &panel.series {
        let c = color(s.color);
        if s.points.iter().any(|p| p.3 > p.2) {
            let band: Vec<(f32, f32)> = s.points.iter().map(|p| (p.0, p.3)).chain(s.points.iter().rev().map(|p| (p.0, p.2.max(floor)))).collect();
            // Fainter where many bands overlap.
            let alpha = if panel.series.len() > 4 { 0.07 } else { 0.18 };
            chart.draw_series([Polygon::new(band, c.mix(alpha).filled())])?;
        }
        chart.draw_series(LineSeries::new(s.points.iter().map(|p| (p.0, p.1)), c.stroke_width(2)))?;
    }
    Ok(())
}
