//! The report's figures, drawn with plotters to PNG and SVG from the same code. Text is at least
//! 11 px at the figure's own size (the report shows them at that size), legends sit outside the
//! data, and a thing (a loss term, a table row) keeps its colour in every panel.

mod bars;
mod curves;
mod style;

pub use bars::{ConfidenceFigure, Example, ExamplesFigure, FoldBars, FoldsFigure};
pub use curves::{Band, CurvePanel, CurvesFigure};
use style::{DrawResult, TICK, TITLE, legend, padded};
pub use style::{Figure, Mark, color};

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Makes the TTF font at `path` the figures' `sans-serif` (plotters draws text with it).
pub fn use_font(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read font (run scripts/fetch-assets, or pass --font)", path.display()))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| anyhow!("{}: not a TrueType font", path.display()))
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
