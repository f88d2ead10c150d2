//! The report's figures, drawn with plotters to PNG and SVG from the same code. Text is at least
//! 11 px at the figure's own size (the report shows them at that size), legends sit outside the
//! data, and a thing (a loss term, a table row) keeps its colour in every panel.

mod bars;
mod curves;

pub use bars::{ConfidenceFigure, Example, ExamplesFigure, FoldBars, FoldsFigure};
pub use curves::{Band, CurvePanel, CurvesFigure};

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Text sizes in plotters' units: tick labels, legends and bar labels, panel titles. Its SVG
/// and bitmap text is the size / 1.24 in px, so 14 is 11.3 px.
const TICK: u32 = 14;
const LABEL: u32 = 15;
const TITLE: u32 = 18;

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

/// Twenty colours that stay apart (Tableau 10, then darker ones); the i-th thing of a kind
/// gets the i-th.
pub fn color(i: usize) -> RGBColor {
    const C: [(u8, u8, u8); 20] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
        (57, 59, 121),
        (99, 121, 57),
        (140, 109, 49),
        (132, 60, 57),
        (123, 65, 115),
        (82, 84, 163),
        (140, 162, 82),
        (189, 158, 57),
        (173, 73, 74),
        (0, 0, 0),
    ];
    let (r, g, b) = C[i % C.len()];
    RGBColor(r, g, b)
}

/// How a legend entry is drawn.
#[derive(Clone, Copy)]
pub enum Mark {
    Dot,
    Line,
    Box,
}

/// A legend laid out left to right in `area` (wrapping), outside any data.
fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, items: &[(String, RGBColor, Mark)]) -> DrawResult<DB> {
    let width = area.dim_in_pixel().0 as i32;
    let (mut x, mut y) = (10, 6);
    for (name, c, mark) in items {
        let w = 30 + (name.chars().count() as i32 * LABEL as i32 * 6) / 10;
        if x + w > width && x > 10 {
            (x, y) = (10, y + LABEL as i32 + 8);
        }
        let mid = y + LABEL as i32 / 2;
        match mark {
            Mark::Dot => area.draw(&Circle::new((x + 7, mid), 5, c.filled()))?,
            Mark::Line => area.draw(&PathElement::new([(x, mid), (x + 16, mid)], c.stroke_width(3)))?,
            Mark::Box => area.draw(&Rectangle::new([(x, mid - 6), (x + 14, mid + 6)], c.filled()))?,
        }
        area.draw(&Text::new(name.clone(), (x + 22, y), ("sans-serif", LABEL)))?;
        x += w + 14;
    }
    Ok(())
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

/// Figure 3: t-SNE of x_v and of x_CDR, side by side, one colour per class, the legend above.
pub struct TsneFigure {
    pub panels: [Scatter; 2],
    /// Name of each label value (the legend).
    pub class_names: Vec<(u32, String)>,
}

impl Figure for TsneFigure {
    fn size(&self) -> (u32, u32) {
        (1200, 600)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (top, rest) = root.split_vertically(40 + 22 * (self.class_names.len() as u32 / 6));
        let items: Vec<_> = self.class_names.iter().enumerate().map(|(i, (_, n))| (n.clone(), color(i), Mark::Dot)).collect();
        legend(&top, &items)?;
        let (l, r) = rest.split_horizontally(600);
        for (area, sc) in [(l, &self.panels[0]), (r, &self.panels[1])] {
            let mut chart = ChartBuilder::on(&area)
                .caption(&sc.title, ("sans-serif", TITLE))
                .margin(12)
                .x_label_area_size(26)
                .y_label_area_size(40)
                .build_cartesian_2d(padded(sc.points.iter().map(|p| p[0])), padded(sc.points.iter().map(|p| p[1])))?;
            chart.configure_mesh().disable_mesh().label_style(("sans-serif", TICK)).draw()?;
            for (i, (label, _)) in self.class_names.iter().enumerate() {
                let c = color(i);
                chart.draw_series(sc.points.iter().zip(&sc.labels).filter(|(_, l)| *l == label).map(|(p, _)| Circle::new((p[0], p[1]), 4, c.filled())))?;
            }
        }
        Ok(())
    }
}
