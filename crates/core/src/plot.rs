//! Figures for reports: PNG line plots (with ±1 std bands) and PNG image grids.

use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;
use tch::{Kind, Tensor};

/// One line of a plot: points and, optionally, a ±1 std half-width per point.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
    /// Standard deviation at each point (drawn as a band).
    pub std: Option<Vec<f64>>,
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a system sans-serif font once; false when none is found (plots then carry no text).
fn fonts() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let env = std::env::var("REPRISE_FONT").ok();
        for p in env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied())
        {
            if let Ok(bytes) = std::fs::read(p) {
                let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).is_ok() {
                    return true;
                }
            }
        }
        tracing::warn!("no TrueType font found (set REPRISE_FONT); plots are drawn without text");
        false
    })
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn plot_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> Error + '_ {
    move |e| Error::msg(format!("{}: cannot draw the plot: {e}", path.display()))
}

/// One panel of a figure: its series and how its axes are labelled.
#[derive(Debug, Clone, Copy)]
pub struct Panel<'a> {
    /// The panel's own title (empty: none).
    pub title: &'a str,
    /// The x axis label.
    pub x_label: &'a str,
    /// The y axis label.
    pub y_label: &'a str,
    /// The lines.
    pub series: &'a [Series],
    /// Ticks at these x values with these labels instead of evenly spaced numbers: categories
    /// (depths 4, 8, 16 drawn evenly apart) or the values of a transformed axis (ε on a
    /// symmetric-log axis).
    pub x_ticks: Option<&'a [(f64, String)]>,
}

/// Draws a line plot with one line (and std band) per series into a PNG, the legend beside
/// the plot, outside the data.
pub fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    panels_plot(
        path,
        title,
        &[Panel {
            title: "",
            x_label,
            y_label,
            series,
            x_ticks: None,
        }],
    )
}

/// The range of the points (and their std bands), padded in y.
fn extent(series: &[Series], path: &Path) -> Result<(f64, f64, f64, f64)> {
    let pts = series.iter().flat_map(|s| {
        let std = s.std.clone().unwrap_or_else(|| vec![0.0; s.points.len()]);
        s.points
            .iter()
            .zip(std)
            .flat_map(|(&(x, y), e)| [(x, y - e), (x, y + e)])
            .collect::<Vec<_>>()
    });
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for (x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return Err(Error::msg(format!(
            "{}: nothing finite to plot",
            path.display()
        )));
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    Ok((x0, x1, y0 - pad, y1 + pad))
}

/// Width of a plot panel and of the legend column beside the panels, in pixels.
const PANEL_W: u32 = 560;
const LEGEND_W: u32 = 230;

/// A figure of `n` panels side by side under `title` (when `text`), with a legend column to
/// their right when `legend`: the whole image, the panels' areas and the legend's area.
#[allow(clippy::type_complexity)]
fn frame<'a>(
    path: &'a Path,
    title: &str,
    n: usize,
    legend: bool,
    text: bool,
) -> Result<(
    DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    Vec<DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>>,
    DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
)> {
    let e = plot_err(path);
    let width = PANEL_W * n as u32 + if legend { LEGEND_W } else { 0 };
    let root = BitMapBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let body = if text {
        root.titled(title, ("sans-serif", 20)).map_err(&e)?
    } else {
        root.clone()
    };
    let (plots, side) = body.split_horizontally(PANEL_W * n as u32);
    let areas = plots.split_evenly((1, n));
    Ok((root, areas, side))
}

/// Draws the legend of `names` (colour by position) in `area`, top to bottom.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    entries: &[(String, ShapeStyle)],
    path: &Path,
) -> Result<()> {
    let e = plot_err(path);
    for (i, (name, style)) in entries.iter().enumerate() {
        let y = 50 + 24 * i as i32;
        area.draw(&PathElement::new(vec![(8, y), (34, y)], *style))
            .map_err(&e)?;
        area.draw(&Text::new(
            name.clone(),
            (40, y - 8),
            ("sans-serif", 15).into_font(),
        ))
        .map_err(&e)?;
    }
    Ok(())
}

/// Draws panels side by side into one PNG, a shared legend to their right (a series keeps its
/// colour across panels by name).
pub fn panels_plot(path: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    if panels.is_empty() {
        return Err(Error::msg(format!("{}: no panel to plot", path.display())));
    }
    let text = fonts();
    let mut names: Vec<String> = Vec::new();
    for p in panels {
        for s in p.series {
            if !names.contains(&s.name) {
                names.push(s.name.clone());
            }
        }
    }
    let colour = |name: &str| {
        let i = names.iter().position(|n| n == name).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let legend = text && names.len() > 1;
    let e = plot_err(path);
    let (root, areas, side) = frame(path, title, panels.len(), legend, text)?;
    for (p, area) in panels.iter().zip(&areas) {
        let (x0, x1, y0, y1) = extent(p.series, path)?;
        let (x0, x1) = match p.x_ticks {
            // Room around the first and last category.
            Some(t) if !t.is_empty() => {
                let lo = t.iter().map(|t| t.0).fold(f64::INFINITY, f64::min);
                let hi = t.iter().map(|t| t.0).fold(f64::NEG_INFINITY, f64::max);
                let m = ((hi - lo) * 0.06).max(0.1);
                (x0.min(lo) - m, x1.max(hi) + m)
            }
            _ => (x0, x1),
        };
        let mut b = ChartBuilder::on(area);
        b.margin(12);
        if text {
            if !p.title.is_empty() {
                b.caption(p.title, ("sans-serif", 16));
            }
            b.x_label_area_size(44).y_label_area_size(60);
        }
        let mut chart = b.build_cartesian_2d(x0..x1, y0..y1).map_err(&e)?;
        {
            let mut mesh = chart.configure_mesh();
            if text {
                mesh.x_desc(p.x_label).y_desc(p.y_label);
                if p.x_ticks.is_some() {
                    mesh.disable_x_mesh().x_labels(0);
                }
            } else {
                mesh.disable_x_mesh().disable_y_mesh();
            }
            mesh.draw().map_err(&e)?;
        }
        if let (true, Some(ticks)) = (text, p.x_ticks) {
            for (x, label) in ticks {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(*x, y0), (*x, y1)],
                        BLACK.mix(0.1).stroke_width(1),
                    )))
                    .map_err(&e)?;
                let (px, py) = chart.backend_coord(&(*x, y0));
                let half = 4 * label.chars().count() as i32;
                root.draw(&Text::new(
                    label.clone(),
                    (px - half, py + 6),
                    ("sans-serif", 14).into_font(),
                ))
                .map_err(&e)?;
            }
        }
        for s in p.series {
            let c = colour(&s.name);
            if let Some(std) = &s.std {
                let upper: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .zip(std)
                    .map(|(&(x, y), e)| (x, y + e))
                    .collect();
                let lower: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .zip(std)
                    .rev()
                    .map(|(&(x, y), e)| (x, y - e))
                    .collect();
                let poly: Vec<(f64, f64)> = upper.into_iter().chain(lower).collect();
                chart
                    .draw_series(std::iter::once(Polygon::new(poly, c.mix(0.2).filled())))
                    .map_err(&e)?;
            }
            chart
                .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(2)))
                .map_err(&e)?;
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                .map_err(&e)?;
        }
    }
    if legend {
        let entries: Vec<(String, ShapeStyle)> = names
            .iter()
            .map(|n| (n.clone(), colour(n).stroke_width(3)))
            .collect();
        draw_legend(&side, &entries, path)?;
    }
    root.present().map_err(&e)?;
    Ok(())
}

/// Reliability diagrams, one panel per model: each bin's accuracy as a bar over the bin, the
/// gap to the bin's mean confidence shaded, the number of examples above the bar, and the
/// diagonal of perfect calibration. `models` holds each model's bins (edges, count, mean
/// confidence, accuracy).
pub fn reliability_plot(
    path: &Path,
    title: &str,
    models: &[(String, Vec<crate::metrics::Bin>)],
) -> Result<()> {
    if models.is_empty() {
        return Err(Error::msg(format!("{}: no model to plot", path.display())));
    }
    let text = fonts();
    let e = plot_err(path);
    let (root, areas, side) = frame(path, title, models.len(), text, text)?;
    let bar = PALETTE[0];
    let gap = PALETTE[3];
    for ((name, bins), area) in models.iter().zip(areas) {
        let mut b = ChartBuilder::on(&area);
        b.margin(12);
        if text {
            b.caption(name, ("sans-serif", 16))
                .x_label_area_size(44)
                .y_label_area_size(60);
        }
        let mut chart = b.build_cartesian_2d(0.0..1.0, 0.0..1.08).map_err(&e)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("confidence").y_desc("accuracy in bin");
        }
        mesh.disable_x_mesh().draw().map_err(&e)?;
        let filled: Vec<&crate::metrics::Bin> = bins.iter().filter(|b| b.count > 0).collect();
        chart
            .draw_series(
                filled.iter().map(|b| {
                    Rectangle::new([(b.lo, 0.0), (b.hi, b.accuracy)], bar.mix(0.75).filled())
                }),
            )
            .map_err(&e)?;
        chart
            .draw_series(filled.iter().map(|b| {
                Rectangle::new(
                    [(b.lo, b.accuracy), (b.hi, b.confidence)],
                    gap.mix(0.35).filled(),
                )
            }))
            .map_err(&e)?;
        // The gap outlined, so that it reads where it overlaps the bar (accuracy above confidence).
        chart
            .draw_series(filled.iter().map(|b| {
                Rectangle::new(
                    [(b.lo, b.accuracy), (b.hi, b.confidence)],
                    gap.stroke_width(1),
                )
            }))
            .map_err(&e)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                BLACK.stroke_width(1),
            )))
            .map_err(&e)?;
        if text {
            for b in &filled {
                let top = b.accuracy.max(b.confidence);
                let (px, py) = chart.backend_coord(&((b.lo + b.hi) / 2.0, top));
                let label = b.count.to_string();
                let half = 3 * label.chars().count() as i32;
                root.draw(&Text::new(
                    label,
                    (px - half, py - 14),
                    ("sans-serif", 11).into_font(),
                ))
                .map_err(&e)?;
            }
        }
    }
    if text {
        let entries = vec![
            ("accuracy in bin".to_string(), bar.mix(0.75).stroke_width(8)),
            (
                "gap to mean confidence".to_string(),
                gap.mix(0.35).stroke_width(8),
            ),
            ("perfect calibration".to_string(), BLACK.stroke_width(1)),
            (
                "(numbers: examples in bin)".to_string(),
                WHITE.stroke_width(1),
            ),
        ];
        draw_legend(&side, &entries, path)?;
    }
    root.present().map_err(&e)?;
    Ok(())
}

/// Labels of an image grid: one per column (drawn above it) and one per row (drawn to its
/// left); either may be empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GridLabels {
    /// Column headings, left to right.
    pub columns: Vec<String>,
    /// Row labels, top to bottom.
    pub rows: Vec<String>,
}

/// Writes images `N×C×H×W` (C = 1 or 3, values in `[lo, hi]`) as a PNG grid of `cols` columns,
/// each image scaled up by `scale`, with a 1-pixel grey border.
pub fn image_grid(
    path: &Path,
    images: &Tensor,
    cols: usize,
    scale: u32,
    lo: f64,
    hi: f64,
) -> Result<()> {
    image_grid_labeled(path, images, cols, scale, lo, hi, &GridLabels::default())
}

/// [`image_grid`] with column headings above the grid and row labels to its left.
pub fn image_grid_labeled(
    path: &Path,
    images: &Tensor,
    cols: usize,
    scale: u32,
    lo: f64,
    hi: f64,
    labels: &GridLabels,
) -> Result<()> {
    let text = fonts();
    // Cells at least as wide as their heading (about 8 pixels a character) and as tall as a
    // row label: small images are scaled up further.
    let n = images.size().first().copied().unwrap_or(0).max(1) as usize;
    let ncols = cols.clamp(1, n);
    let (h, w) = match images.size()[..] {
        [_, _, h, w] => (h.max(1) as u32, w.max(1) as u32),
        _ => (1, 1),
    };
    let widest = labels
        .columns
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(0) as u32;
    let need_w = if text && widest > 0 {
        8 * widest + 8
    } else {
        0
    };
    let need_h: u32 = if text && !labels.rows.is_empty() {
        18
    } else {
        0
    };
    let scale = scale.max(1).max(need_w.div_ceil(w)).max(need_h.div_ceil(h));
    let grid = grid_image(images, ncols, scale, lo, hi)?;
    let has_cols = text && !labels.columns.is_empty();
    let has_rows = text && !labels.rows.is_empty();
    let top = if has_cols { 22 } else { 0 };
    let left = if has_rows {
        8 + 8 * labels
            .rows
            .iter()
            .map(|r| r.chars().count())
            .max()
            .unwrap_or(0) as u32
    } else {
        0
    };
    let (gw, gh) = grid.dimensions();
    let (w, h) = (gw + left, gh + top);
    let mut canvas = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    image::imageops::replace(&mut canvas, &grid, i64::from(left), i64::from(top));
    if has_cols || has_rows {
        let e = plot_err(path);
        let cols = ncols;
        let rows = n.div_ceil(cols);
        let (cw, ch) = (gw / cols as u32, gh / rows as u32);
        let mut buf = canvas.into_raw();
        {
            let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            let font = ("sans-serif", 14).into_font();
            for (i, l) in labels.columns.iter().enumerate().take(cols) {
                let x = left + i as u32 * cw + cw / 2;
                let half = 4 * l.chars().count() as u32;
                area.draw(&Text::new(
                    l.clone(),
                    (x.saturating_sub(half) as i32, 3),
                    font.clone(),
                ))
                .map_err(&e)?;
            }
            for (i, l) in labels.rows.iter().enumerate().take(rows) {
                let y = top + i as u32 * ch + ch / 2;
                area.draw(&Text::new(l.clone(), (4, y as i32 - 7), font.clone()))
                    .map_err(&e)?;
            }
            area.present().map_err(&e)?;
        }
        canvas = image::RgbImage::from_raw(w, h, buf).expect("the buffer is w × h × 3");
    }
    canvas.save(path).map_err(|e| {
        Error::msg(format!(
            "{}: cannot write the image grid: {e}",
            path.display()
        ))
    })
}

/// The grid of [`image_grid`] as an image.
fn grid_image(
    images: &Tensor,
    cols: usize,
    scale: u32,
    lo: f64,
    hi: f64,
) -> Result<image::RgbImage> {
    let s = images.size();
    if s.len() != 4 || !(s[1] == 1 || s[1] == 3) || s[0] == 0 {
        return Err(Error::msg(format!(
            "image grid wants N×(1|3)×H×W images, got {s:?}"
        )));
    }
    let (n, c, h, w) = (s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize);
    let x = ((images
        .detach()
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        - lo)
        / (hi - lo))
        .clamp(0.0, 1.0)
        * 255.0;
    let bytes = Vec::<f32>::try_from(x.reshape([-1])).map_err(|e| Error::msg(e.to_string()))?;
    let cols = cols.clamp(1, n);
    let rows = n.div_ceil(cols);
    let sc = scale.max(1) as usize;
    let (cw, ch) = (w * sc + 1, h * sc + 1);
    let mut img = image::RgbImage::from_pixel(
        (cols * cw + 1) as u32,
        (rows * ch + 1) as u32,
        image::Rgb([128, 128, 128]),
    );
    for k in 0..n {
        let (r, q) = (k / cols, k % cols);
        for yy in 0..h * sc {
            for xx in 0..w * sc {
                let (y, x) = (yy / sc, xx / sc);
                let px = |ch_i: usize| bytes[((k * c + ch_i) * h + y) * w + x].round() as u8;
                let rgb = if c == 1 {
                    [px(0); 3]
                } else {
                    [px(0), px(1), px(2)]
                };
                img.put_pixel(
                    (q * cw + 1 + xx) as u32,
                    (r * ch + 1 + yy) as u32,
                    image::Rgb(rgb),
                );
            }
        }
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_plot_writes_a_png() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("plot.png");
        let s = vec![
            Series {
                name: "a".into(),
                points: vec![(0.0, 1.0), (1.0, 2.0), (2.0, 1.5)],
                std: Some(vec![0.1, 0.2, 0.1]),
            },
            Series {
                name: "b".into(),
                points: vec![(0.0, 0.5), (2.0, 0.7)],
                std: None,
            },
        ];
        line_plot(&p, "title", "x", "y", &s).unwrap();
        let img = image::open(&p).unwrap();
        // The legend has a column of its own beside the plot (where a font is found).
        assert!(img.width() == PANEL_W || img.width() == PANEL_W + LEGEND_W);
        assert_eq!(img.height(), 480);
        let ticks = [
            (0.0, "4".to_string()),
            (1.0, "8".to_string()),
            (2.0, "16".to_string()),
        ];
        let panel = Panel {
            title: "L2",
            x_label: "depth",
            y_label: "acc",
            series: &s,
            x_ticks: Some(&ticks),
        };
        panels_plot(
            &p,
            "two panels",
            &[
                panel,
                Panel {
                    title: "Linf",
                    ..panel
                },
            ],
        )
        .unwrap();
        assert!(image::open(&p).unwrap().width() >= 2 * PANEL_W);
        let bins = vec![crate::metrics::Bin {
            lo: 0.5,
            hi: 0.75,
            count: 12,
            confidence: 0.7,
            accuracy: 0.6,
        }];
        reliability_plot(
            &p,
            "reliability",
            &[("a".into(), bins.clone()), ("b".into(), bins)],
        )
        .unwrap();
        assert!(image::open(&p).unwrap().width() >= 2 * PANEL_W);
        assert!(line_plot(&p, "t", "x", "y", &[]).is_err());
    }

    #[test]
    fn image_grid_lays_out_images() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("grid.png");
        let imgs = Tensor::cat(
            &[
                Tensor::zeros([1, 3, 2, 2], (Kind::Float, tch::Device::Cpu)),
                Tensor::ones([2, 3, 2, 2], (Kind::Float, tch::Device::Cpu)),
            ],
            0,
        );
        let labels = GridLabels {
            columns: vec!["in".into(), "out".into()],
            rows: vec!["r0".into(), "r1".into()],
        };
        image_grid_labeled(&p, &imgs, 2, 3, 0.0, 1.0, &labels).unwrap();
        let lab = image::open(&p).unwrap().to_rgb8();
        if fonts() {
            assert!(lab.width() > 15 && lab.height() > 15, "labels add margins");
        }
        image_grid(&p, &imgs, 2, 3, 0.0, 1.0).unwrap();
        let g = image::open(&p).unwrap().to_rgb8();
        // 2 columns × 2 rows of 6-pixel cells with 1-pixel borders.
        assert_eq!(g.dimensions(), (2 * 7 + 1, 2 * 7 + 1));
        assert_eq!(g.get_pixel(1, 1).0, [0, 0, 0]);
        assert_eq!(g.get_pixel(8, 1).0, [255, 255, 255]);
        assert_eq!(g.get_pixel(0, 0).0, [128, 128, 128]);
        let gray = Tensor::full([1, 1, 2, 2], -1.0, (Kind::Float, tch::Device::Cpu));
        image_grid(&p, &gray, 4, 1, -1.0, 1.0).unwrap();
        assert!(image_grid(
            &p,
            &Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu)),
            1,
            1,
            0.0,
            1.0
        )
        .is_err());
    }
}
