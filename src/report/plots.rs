//! The report's figures, drawn with plotters to PNG and SVG from the same code.

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Makes the TTF font at `path` the figures' `sans-serif` (plotters draws text with it).
pub fn use_font(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read font (run scripts/fetch-assets, or pass --font)", path.display()))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| anyhow!("{}: not a TrueType font", path.display()))
}

/// A figure that can draw itself on any plotters backend.
pub trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

/// Writes `stem.png` and `stem.svg`; returns their paths.
pub fn save(fig: &impl Figure, stem: &Path) -> Result<(PathBuf, PathBuf)> {
    let (w, h) = fig.size();
    let (png, svg) = (stem.with_extension("png"), stem.with_extension("svg"));
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
        fig.draw(&root).map_err(|e| anyhow!("drawing {}: {e:?}", png.display()))?;
        root.present().map_err(|e| anyhow!("{e:?}"))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).context("bitmap size")?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    crate::fsutil::write_atomic(&png, &bytes)?;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
        fig.draw(&root).map_err(|e| anyhow!("drawing {}: {e:?}", svg.display()))?;
        root.present().map_err(|e| anyhow!("{e:?}"))?;
    }
    crate::fsutil::write_atomic(&svg, text.as_bytes())?;
    Ok((png, svg))
}

/// Range of `v` with a 5% margin (and a non-empty span).
fn padded(v: impl Iterator<Item = f32> + Clone) -> std::ops::Range<f32> {
    let lo = v.clone().fold(f32::INFINITY, f32::min);
    let hi = v.fold(f32::NEG_INFINITY, f32::max);
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad)..(hi + pad)
}

/// One 2-D layout coloured by class.
pub struct Scatter {
    pub title: String,
    pub points: Vec<[f32; 2]>,
    pub labels: Vec<u32>,
}

/// Figure 3: t-SNE of x_v and of x_CDR, side by side, one colour per class.
pub struct TsneFigure {
    pub panels: [Scatter; 2],
    /// Name of each label value (the legend).
    pub class_names: Vec<(u32, String)>,
}

impl Figure for TsneFigure {
    fn size(&self) -> (u32, u32) {
        (1200, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (l, r) = root.split_horizontally(600);
        for (area, sc) in [(l, &self.panels[0]), (r, &self.panels[1])] {
            let mut chart = ChartBuilder::on(&area)
                .caption(&sc.title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(24)
                .y_label_area_size(36)
                .build_cartesian_2d(padded(sc.points.iter().map(|p| p[0])), headroom(padded(sc.points.iter().map(|p| p[1]))))?;
            chart.configure_mesh().disable_mesh().label_style(("sans-serif", 11)).draw()?;
            for (i, (label, name)) in self.class_names.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let pts = sc.points.iter().zip(&sc.labels).filter(|(_, l)| *l == label).map(|(p, _)| Circle::new((p[0], p[1]), 4, color.filled()));
                chart.draw_series(pts)?.label(name.as_str()).legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperMiddle)
                .label_font(("sans-serif", 12))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
        Ok(())
    }
}

/// The range with 35% more room on top (for a legend).
fn headroom(r: std::ops::Range<f32>) -> std::ops::Range<f32> {
    r.start..r.end + 0.35 * (r.end - r.start)
}

/// One test image: its true class and the top-5 of two heads.
pub struct Example {
    pub title: String,
    pub heads: [Vec<(String, f32)>; 2],
}

/// Figure 4 (left): top-5 class probabilities of two heads for a few test images.
pub struct ExamplesFigure {
    pub head_names: [String; 2],
    pub examples: Vec<Example>,
}

impl Figure for ExamplesFigure {
    fn size(&self) -> (u32, u32) {
        (1000, 40 + 170 * self.examples.len() as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let rows = root.split_evenly((self.examples.len().max(1), 2));
        let colors = [BLUE.mix(0.6), RED.mix(0.6)];
        for (i, ex) in self.examples.iter().enumerate() {
            for h in 0..2 {
                let area = &rows[2 * i + h];
                let mut chart = ChartBuilder::on(area)
                    .caption(format!("{} - {}", ex.title, self.head_names[h]), ("sans-serif", 14))
                    .margin(6)
                    .x_label_area_size(18)
                    .build_cartesian_2d(0f32..1f32, 0f32..5f32)?;
                chart.configure_mesh().disable_mesh().y_labels(0).x_labels(5).label_style(("sans-serif", 10)).draw()?;
                for (rank, (name, p)) in ex.heads[h].iter().enumerate() {
                    let y = 4.0 - rank as f32;
                    chart.draw_series([Rectangle::new([(0.0, y + 0.12), (*p, y + 0.88)], colors[h].filled())])?;
                    chart.draw_series([Text::new(format!("{name} {:.1}%", 100.0 * p), (0.01, y + 0.75), ("sans-serif", 12))])?;
                }
            }
        }
        Ok(())
    }
}

/// Figure 4 (right): histogram of the max class probability of two heads over a test set.
pub struct ConfidenceFigure {
    pub title: String,
    pub head_names: [String; 2],
    pub max_probs: [Vec<f32>; 2],
}

impl Figure for ConfidenceFigure {
    fn size(&self) -> (u32, u32) {
        (800, 500)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        const BINS: usize = 20;
        let counts: Vec<Vec<usize>> = self
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
        let top = counts.iter().flatten().copied().max().unwrap_or(1) as f32 * 1.1;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(0f32..1f32, 0f32..top)?;
        chart.configure_mesh().disable_mesh().x_desc("max class probability").y_desc("test images").label_style(("sans-serif", 12)).draw()?;
        for (h, color) in [BLUE.mix(0.45), RED.mix(0.45)].into_iter().enumerate() {
            let w = 1.0 / BINS as f32;
            let bars = counts[h].iter().enumerate().map(move |(b, &c)| Rectangle::new([(b as f32 * w, 0.0), ((b + 1) as f32 * w, c as f32)], color.filled()));
            chart.draw_series(bars)?.label(self.head_names[h].as_str()).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    }
}

/// One panel of curves: named series of (epoch, value).
pub struct CurvePanel {
    pub title: String,
    /// Legend bottom-right (rising curves) instead of top-right (falling ones).
    pub rising: bool,
    pub y_desc: String,
    pub series: Vec<(String, Vec<(f32, f32)>)>,
}

/// Training curves: a grid of panels.
pub struct CurvesFigure {
    pub panels: Vec<CurvePanel>,
}

impl Figure for CurvesFigure {
    fn size(&self) -> (u32, u32) {
        (1200, 330 * self.panels.len().div_ceil(3) as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let areas = root.split_evenly((self.panels.len().div_ceil(3).max(1), 3));
        for (area, panel) in areas.iter().zip(&self.panels) {
            let all = panel.series.iter().flat_map(|(_, s)| s.iter());
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 15))
                .margin(8)
                .x_label_area_size(28)
                .y_label_area_size(44)
                .build_cartesian_2d(padded(all.clone().map(|p| p.0)), padded(all.map(|p| p.1)))?;
            chart.configure_mesh().disable_mesh().x_desc("epoch").y_desc(panel.y_desc.as_str()).label_style(("sans-serif", 10)).draw()?;
            for (i, (name, pts)) in panel.series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                    .label(name.as_str())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2)));
            }
            let at = if panel.rising { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight };
            chart.configure_series_labels().position(at).label_font(("sans-serif", 10)).background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
        }
        Ok(())
    }
}
