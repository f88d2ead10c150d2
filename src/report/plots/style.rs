//! What every figure shares: text sizes, colours, legends, axis margins, and the [`Figure`]
//! trait that lets one drawing go to both PNG and SVG.

use plotters::coord::Shift;
use plotters::prelude::*;

pub(super) type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Text sizes in plotters' units: tick labels, legends and bar labels, panel titles. Its SVG
/// and bitmap text is the size / 1.24 in px, so 14 is 11.3 px.
pub(super) const TICK: u32 = 14;
pub(super) const LABEL: u32 = 15;
pub(super) const TITLE: u32 = 18;

/// A figure that can draw itself on any plotters backend.
pub trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
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
pub(super) fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, items: &[(String, RGBColor, Mark)]) -> DrawResult<DB> {
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
pub(super) fn padded(v: impl Iterator<Item = f32> + Clone) -> std::ops::Range<f32> {
    let lo = v.clone().fold(f32::INFINITY, f32::min);
    let hi = v.fold(f32::NEG_INFINITY, f32::max);
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad)..(hi + pad)
}
