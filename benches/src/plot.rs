//! PNG plots of benchmark samples: distributions (every sample, not only
//! the median) side by side per measurement, and x/y line charts.
//!
//! Drawn with plotters into an RGB buffer and encoded with `png`; text goes
//! through plotters' pure-Rust ab_glyph rasteriser with DejaVu Sans loaded
//! at run time (Debian's fonts-dejavu-core), so no freetype or fontconfig
//! library is linked.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::register_font;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::stats::Series;

/// Every plot is this wide; heights follow the content.
pub const WIDTH: u32 = 1200;
/// The height of a [`lines`] chart.
pub const LINES_HEIGHT: u32 = 700;

const FONT_DIR: &str = "/usr/share/fonts/truetype/dejavu";
const FONT: &str = "sans-serif";
/// A panel's rows are spread this many pixels apart.
const ROW_PX: u32 = 62;
/// A panel's caption, x axis and margins.
const PANEL_CHROME_PX: u32 = 125;
const TITLE_PX: u32 = 50;
/// The rows' names: their size, and the widest they may be.
const LABEL_SIZE: f64 = 17.0;
const MAX_LABEL_PX: u32 = WIDTH / 3;
/// Log scale once a panel's largest sample is this many times its smallest.
const LOG_RATIO: f64 = 20.0;

/// Tableau 10: distinguishable, and the same system keeps its colour in
/// every panel.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Registers DejaVu Sans (regular and bold) from [`FONT_DIR`] as plotters'
/// "sans-serif", once per process.
fn fonts() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED.get_or_init(|| register_fonts(Path::new(FONT_DIR))).clone().map_err(|message| anyhow!(message))
}

fn register_fonts(dir: &Path) -> Result<(), String> {
    let styles = [("DejaVuSans.ttf", FontStyle::Normal), ("DejaVuSans-Bold.ttf", FontStyle::Bold)];
    let mut fonts = Vec::new();
    for (file, style) in styles {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).map_err(|err| {
            format!(
                "the plots' font {} cannot be read ({err}): install Debian's fonts-dejavu-core \
                 (scripts/install-deps.sh benches)",
                path.display()
            )
        })?;
        fonts.push((path, style, bytes));
    }
    for (path, style, bytes) in fonts {
        // plotters keeps fonts for the life of the process; this runs once
        // per process, so the leak is bounded (two files).
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        register_font(FONT, style, bytes).map_err(|_| format!("{} is not a usable TrueType font", path.display()))?;
    }
    Ok(())
}

fn font(size: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::Name(FONT), size, FontStyle::Normal)
}

fn bold(size: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::Name(FONT), size, FontStyle::Bold)
}

/// Draws into an RGB buffer of `width` × `height` and writes it to `path`
/// as a PNG.
fn render(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    fonts()?;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().with_context(|| format!("writing {}", path.display()))?;
    writer.write_image_data(&rgb).with_context(|| format!("writing {}", path.display()))?;
    writer.finish().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A short tick label: at most three significant digits, no trailing zeros.
fn tick(v: f64) -> String {
    let a = v.abs();
    let decimals = if a == 0.0 || a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        (2.0 - a.log10().floor()) as usize
    };
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// 1, 2, 5 × 10ⁿ within `range`: log axes label more than the powers of ten.
fn log_ticks(range: &Range<f64>) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(range.start.log10().floor());
    while decade <= range.end {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if range.contains(&v) {
                ticks.push(v);
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// The value at fraction `q` of the sorted samples, interpolating linearly.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// A spread of offsets in [-0.5, 0.5) that does not repeat (golden-ratio
/// sequence): dots of equal value stay apart, the same on every run.
fn jitter(i: usize) -> f64 {
    (i as f64 * 0.618_033_988_749_895).fract() - 0.5
}

/// The width of `text` in pixels.
fn text_px(text: &str, font: &FontDesc) -> Result<u32> {
    Ok(font.box_size(text).map_err(|e| anyhow!("measuring {text:?}: {e}"))?.0)
}

/// `text`, cut short with an ellipsis if it is wider than `max_px`.
fn fit(text: &str, font: &FontDesc, max_px: u32) -> Result<String> {
    if text_px(text, font)? <= max_px {
        return Ok(text.to_owned());
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let short = format!("{}…", chars.iter().collect::<String>().trim_end());
        if text_px(&short, font)? <= max_px {
            return Ok(short);
        }
    }
    Ok("…".into())
}

/// One distribution in a panel.
struct Row {
    label: String,
    colour: RGBColor,
    samples: Vec<f64>,
}

struct Panel<'a> {
    title: &'a str,
    unit: &'a str,
    rows: Vec<Row>,
}

/// Sorts the series into panels (by group, else alone by name), checking
/// that every sample is a finite number and that a panel shares one unit.
fn panels<'a>(series: &[&'a Series]) -> Result<Vec<Panel<'a>>> {
    if series.is_empty() {
        bail!("no series to plot");
    }
    let mut colours: BTreeMap<&str, RGBColor> = BTreeMap::new();
    let mut panels: Vec<Panel> = Vec::new();
    for s in series {
        if s.samples.is_empty() {
            bail!("series {:?} has no samples to plot", s.name);
        }
        if let Some(bad) = s.samples.iter().find(|v| !v.is_finite()) {
            bail!("series {:?} has a sample that is not a finite number: {bad}", s.name);
        }
        // A series on its own is named by its panel's title.
        let label = if !s.system.is_empty() {
            s.system.as_str()
        } else if s.group.is_empty() {
            ""
        } else {
            s.name.as_str()
        };
        let next = PALETTE[colours.len() % PALETTE.len()];
        let colour = *colours.entry(if s.system.is_empty() { &s.name } else { &s.system }).or_insert(next);
        let mut samples = s.samples.clone();
        samples.sort_by(f64::total_cmp);
        let row = Row { label: label.to_owned(), colour, samples };
        let existing = panels.iter_mut().find(|p| !s.group.is_empty() && p.title == s.group);
        match existing {
            Some(panel) => {
                if panel.unit != s.unit {
                    bail!("group {:?} mixes units {:?} and {:?} (series {:?})", s.group, panel.unit, s.unit, s.name);
                }
                if panel.rows.iter().any(|r| r.label == label) {
                    bail!("group {:?} has system {label:?} twice", s.group);
                }
                panel.rows.push(row);
            }
            None => {
                let title = if s.group.is_empty() { s.name.as_str() } else { s.group.as_str() };
                panels.push(Panel { title, unit: &s.unit, rows: vec![row] });
            }
        }
    }
    Ok(panels)
}

/// Plots the distributions of `series`: one panel per distinct
/// [`Series::group`] (in order of first appearance; a series without a
/// group gets a panel of its own, titled by its name), stacked vertically,
/// each with its own value axis in the series' unit (logarithmic when the
/// panel spans more than a factor of 20). Each system of a panel is a row:
/// a box from p25 to p75 with the median marked, whiskers to the minimum
/// and maximum, and every sample as a dot, spread vertically.
pub fn distributions(path: &Path, title: &str, series: &[&Series]) -> Result<()> {
    let panels = panels(series)?;
    fonts()?;
    let mut panels = panels;
    let mut label_px = 0;
    for row in panels.iter_mut().flat_map(|p| &mut p.rows) {
        row.label = fit(&row.label, &font(LABEL_SIZE), MAX_LABEL_PX)?;
        label_px = label_px.max(text_px(&row.label, &font(LABEL_SIZE))?);
    }
    let label_px = label_px + 24;
    let heights: Vec<u32> = panels.iter().map(|p| PANEL_CHROME_PX + ROW_PX * p.rows.len() as u32).collect();
    let height = TITLE_PX + heights.iter().sum::<u32>();
    render(path, (WIDTH, height), |root| {
        let (head, mut rest) = root.split_vertically(TITLE_PX);
        // Centred by hand: `titled` anchors the text's top at the edge,
        // where ab_glyph's glyphs rise above it and are cut.
        head.draw(&Text::new(
            title,
            (WIDTH as i32 / 2, TITLE_PX as i32 / 2),
            bold(26.0).color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center)),
        ))?;
        for (panel, h) in panels.iter().zip(&heights) {
            let (area, below) = rest.split_vertically(*h);
            rest = below;
            let lo = panel.rows.iter().map(|r| r.samples[0]).fold(f64::INFINITY, f64::min);
            let hi = panel.rows.iter().map(|r| r.samples[r.samples.len() - 1]).fold(f64::NEG_INFINITY, f64::max);
            if lo > 0.0 && hi / lo > LOG_RATIO {
                let range = lo / 1.25..hi * 1.25;
                let ticks = log_ticks(&range);
                draw_panel(&area, panel, range.log_scale().with_key_points(ticks), label_px, true)?;
            } else {
                let pad = if hi > lo { (hi - lo) * 0.06 } else { lo.abs().max(1.0) * 0.1 };
                let x: RangedCoordf64 = (lo - pad..hi + pad).into();
                draw_panel(&area, panel, x, label_px, false)?;
            }
        }
        Ok(())
    })
}

fn draw_panel<X>(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    panel: &Panel,
    x: X,
    label_px: u32,
    log: bool,
) -> Result<()>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let n = panel.rows.len();
    // Row i (first series on top) sits at y = n - 1 - i.
    let y_of = |i: usize| (n - 1 - i) as f64;
    let y = -0.6..n as f64 - 0.4;
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, bold(20.0))
        .margin(12)
        .margin_right(30)
        .x_label_area_size(58)
        .y_label_area_size(label_px)
        .build_cartesian_2d(x, y)?;
    let x_desc = if log { format!("{} (log scale)", panel.unit) } else { panel.unit.to_owned() };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .x_desc(x_desc)
        .axis_desc_style(font(16.0))
        .x_labels(12)
        .x_label_formatter(&|v| tick(*v))
        .x_label_style(font(15.0))
        // The rows' names are drawn below, level with their rows: an f64
        // axis would put its ticks between them.
        .y_labels(0)
        .draw()?;
    let (left, _) = chart.plotting_area().get_base_pixel();
    let right = left + chart.plotting_area().dim_in_pixel().0 as i32;
    let (base_x, base_y) = area.get_base_pixel();

    for (i, row) in panel.rows.iter().enumerate() {
        let y = y_of(i);
        let s = &row.samples;
        let (min, max) = (s[0], s[s.len() - 1]);
        let (p25, median, p75) = (quantile(s, 0.25), quantile(s, 0.5), quantile(s, 0.75));
        let (_, row_px) = chart.backend_coord(&(median, y));
        area.draw(&Text::new(
            row.label.as_str(),
            (left - base_x - 12, row_px - base_y),
            font(LABEL_SIZE).color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center)),
        ))?;
        let line = row.colour.stroke_width(2);
        chart.draw_series([
            PathElement::new(vec![(min, y), (p25, y)], line),
            PathElement::new(vec![(p75, y), (max, y)], line),
            PathElement::new(vec![(min, y - 0.15), (min, y + 0.15)], line),
            PathElement::new(vec![(max, y - 0.15), (max, y + 0.15)], line),
        ])?;
        chart.draw_series([
            Rectangle::new([(p25, y - 0.3), (p75, y + 0.3)], row.colour.mix(0.18).filled()),
            Rectangle::new([(p25, y - 0.3), (p75, y + 0.3)], row.colour.stroke_width(2)),
        ])?;
        chart.draw_series((0..s.len()).map(|k| {
            // The samples' own order is lost in sorting; spreading by rank
            // keeps equal values apart.
            Circle::new((s[k], y + 0.5 * jitter(k)), 3, row.colour.mix(0.75).filled())
        }))?;
        chart.draw_series([PathElement::new(vec![(median, y - 0.34), (median, y + 0.34)], BLACK.stroke_width(3))])?;
        // Centred over the median, but kept inside the plot: a median at
        // either end of the axis would cut its note in half.
        let note = format!("median {} · n={}", tick(median), s.len());
        let note_px = text_px(&note, &font(14.0))? as i32;
        let (median_px, note_y) = chart.backend_coord(&(median, y + 0.36));
        let note_x = (median_px - note_px / 2).clamp(left, (right - note_px).max(left));
        area.draw(&Text::new(
            note,
            (note_x - base_x, note_y - base_y),
            font(14.0).color(&BLACK).pos(Pos::new(HPos::Left, VPos::Bottom)),
        ))?;
    }
    Ok(())
}

/// An x/y line chart with a marker at every point and a legend: one line
/// per `(name, points)`, in order.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    if lines.is_empty() {
        bail!("no lines to plot");
    }
    for (name, points) in lines {
        if points.is_empty() {
            bail!("line {name:?} has no points to plot");
        }
        if let Some(p) = points.iter().find(|(x, y)| !x.is_finite() || !y.is_finite()) {
            bail!("line {name:?} has a point that is not a pair of finite numbers: {p:?}");
        }
    }
    let all = || lines.iter().flat_map(|(_, p)| p.iter());
    let (x_lo, x_hi) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (x, _)| (lo.min(*x), hi.max(*x)));
    let (y_lo, y_hi) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, y)| (lo.min(*y), hi.max(*y)));
    let pad = |lo: f64, hi: f64| if hi > lo { (hi - lo) * 0.04 } else { lo.abs().max(1.0) * 0.1 };
    let x_range = x_lo - pad(x_lo, x_hi)..x_hi + pad(x_lo, x_hi);
    // Amounts read best from zero; only a series dipping below it moves it.
    let y_range = y_lo.min(0.0) - if y_lo < 0.0 { pad(y_lo, y_hi) } else { 0.0 }..y_hi + pad(y_lo.min(0.0), y_hi) * 2.0;
    render(path, (WIDTH, LINES_HEIGHT), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, bold(26.0))
            .margin(16)
            .margin_right(36)
            .x_label_area_size(64)
            .y_label_area_size(96)
            .build_cartesian_2d(x_range, y_range)?;
        chart
            .configure_mesh()
            .light_line_style(BLACK.mix(0.04))
            .bold_line_style(BLACK.mix(0.12))
            .x_desc(x_label)
            .y_desc(y_label)
            .axis_desc_style(font(18.0))
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .label_style(font(15.0))
            .draw()?;
        for (i, (name, points)) in lines.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(3)))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(3)));
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 5, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font(font(17.0))
            .draw()?;
        Ok(())
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh directory for one test's files (the test removes it).
    pub(crate) fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("husk-bench-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Decodes the PNG fully and returns its size and pixels.
    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::BufReader::new(File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        pixels.truncate(info.buffer_size());
        (info.width, info.height, pixels)
    }

    fn series(group: &str, system: &str, unit: &str, samples: &[f64]) -> Series {
        let mut s = Series::of(group, system, unit);
        samples.iter().for_each(|v| s.push(*v));
        s
    }

    #[test]
    fn distributions_render_a_png_sized_by_their_panels() {
        let dir = temp_dir("dist");
        let husk: Vec<f64> = (0..20).map(|i| 400.0 + (i * 37 % 90) as f64).collect();
        let crun: Vec<f64> = (0..20).map(|i| 9.0 + (i * 7 % 5) as f64).collect();
        let a = series("husk run → exit, /bin/true", "husk", "ms", &husk);
        let b = series("husk run → exit, /bin/true", "crun", "ms", &crun);
        let c = series("podman run --rm, /bin/true", "husk", "ms", &husk);
        let alone = Series { samples: vec![1.0, 2.0, 2.5], ..Series::new("API ready (wall)", "ms") };
        let path = dir.join("d.png");
        distributions(&path, "start-up", &[&a, &b, &c, &alone]).unwrap();
        let (w, h, pixels) = decode(&path);
        assert_eq!(w, WIDTH);
        // Three panels: two rows, one row, one row.
        assert_eq!(h, TITLE_PX + 3 * PANEL_CHROME_PX + 4 * ROW_PX);
        // Something besides the white background was drawn in each colour
        // channel mix: the first palette colour (husk) appears.
        let husk_blue = PALETTE[0];
        let drawn = pixels.chunks(3).filter(|p| p[0] == husk_blue.0 && p[1] == husk_blue.1 && p[2] == husk_blue.2);
        assert!(drawn.count() > 100);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lines_render_a_png_of_the_fixed_size() {
        let dir = temp_dir("lines");
        let path = dir.join("l.png");
        let husk: Vec<(f64, f64)> = (1..=10).map(|n| (n as f64, 30.0 + n as f64 * 0.5)).collect();
        let crun: Vec<(f64, f64)> = (1..=10).map(|n| (n as f64, 2.0)).collect();
        lines(&path, "memory per container", "containers", "MiB", &[("husk".into(), husk), ("crun".into(), crun)])
            .unwrap();
        let (w, h, pixels) = decode(&path);
        assert_eq!((w, h), (WIDTH, LINES_HEIGHT));
        assert!(pixels.chunks(3).any(|p| p != [255, 255, 255]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_input_is_an_error_naming_it() {
        let dir = temp_dir("bad");
        let path = dir.join("x.png");
        let err = |r: Result<()>| r.unwrap_err().to_string();
        assert_eq!(err(distributions(&path, "t", &[])), "no series to plot");
        let empty = Series::of("g", "husk", "ms");
        assert!(err(distributions(&path, "t", &[&empty])).contains("\"g (husk)\" has no samples"));
        let nan = series("g", "husk", "ms", &[1.0, f64::NAN]);
        assert!(err(distributions(&path, "t", &[&nan])).contains("not a finite number: NaN"));
        let ms = series("g", "husk", "ms", &[1.0]);
        let mib = series("g", "crun", "MiB", &[1.0]);
        assert!(err(distributions(&path, "t", &[&ms, &mib])).contains("mixes units"));
        assert!(err(distributions(&path, "t", &[&ms, &ms])).contains("system \"husk\" twice"));

        assert_eq!(err(lines(&path, "t", "x", "y", &[])), "no lines to plot");
        assert!(err(lines(&path, "t", "x", "y", &[("husk".into(), vec![])])).contains("\"husk\" has no points"));
        let inf = vec![(1.0, 2.0), (2.0, f64::INFINITY)];
        assert!(err(lines(&path, "t", "x", "y", &[("husk".into(), inf)])).contains("(2.0, inf)"));
        assert!(!path.exists(), "no PNG is written for bad input");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_or_broken_font_names_the_package_or_file() {
        let dir = temp_dir("fonts");
        let err = register_fonts(&dir).unwrap_err();
        assert!(err.contains("DejaVuSans.ttf cannot be read") && err.contains("fonts-dejavu-core"), "{err}");
        for file in ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf"] {
            std::fs::write(dir.join(file), b"not a font").unwrap();
        }
        let err = register_fonts(&dir).unwrap_err();
        assert!(err.ends_with("DejaVuSans.ttf is not a usable TrueType font"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ticks_and_quantiles() {
        assert_eq!(tick(1500.0), "1500");
        assert_eq!(tick(12.5), "12.5");
        assert_eq!(tick(2.0), "2");
        assert_eq!(tick(0.05), "0.05");
        assert_eq!(log_ticks(&(3.0..120.0)), vec![5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.25), 2.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.5), 1.5);
        fonts().unwrap();
        assert_eq!(fit("crun", &font(LABEL_SIZE), 400).unwrap(), "crun");
        let long = "a very long system name ".repeat(8);
        let short = fit(&long, &font(LABEL_SIZE), 400).unwrap();
        assert!(short.ends_with('…') && long.starts_with(short.trim_end_matches('…')), "{short}");
        assert!(text_px(&short, &font(LABEL_SIZE)).unwrap() <= 400);
    }
}
