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

/// Draws a line plot with one line (and std band) per series into a PNG.
pub fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    let text = fonts();
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
    let (y0, y1) = (y0 - pad, y1 + pad);
    let e = plot_err(path);
    let root = BitMapBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let mut b = ChartBuilder::on(&root);
    b.margin(12);
    if text {
        b.caption(title, ("sans-serif", 20))
            .x_label_area_size(40)
            .y_label_area_size(60);
    }
    let mut chart = b.build_cartesian_2d(x0..x1, y0..y1).map_err(&e)?;
    if text {
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(&e)?;
    } else {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .draw()
            .map_err(&e)?;
    }
    for (i, s) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
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
        let line = chart
            .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(2)))
            .map_err(&e)?;
        if text {
            line.label(s.name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
            });
        }
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(&e)?;
    }
    if text && series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(&e)?;
    }
    root.present().map_err(&e)?;
    Ok(())
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
    img.save(path).map_err(|e| {
        Error::msg(format!(
            "{}: cannot write the image grid: {e}",
            path.display()
        ))
    })
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
        assert_eq!((img.width(), img.height()), (720, 480));
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
