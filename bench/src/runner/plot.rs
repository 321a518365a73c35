//! `results.png`: grouped bars (median, with a min–max whisker) per variant — throughput,
//! request/response latency, request and connection rates, memory per idle connection.
//!
//! Drawn with plotters' bitmap backend and its pure-Rust `ab_glyph` text renderer, so no system
//! library is needed; the font is DejaVu Sans from Debian's `fonts-dejavu-core` (installed by
//! `scripts/setup.sh`).

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};

use super::{
    results::{Results, Samples, idle_label},
    variant::Variant,
};
use crate::stats::Summary;

/// Where the font is looked for, first found wins.
const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// The family name the charts ask for.
const FAMILY: &str = "sans-serif";

const SIZE: (u32, u32) = (1600, 1100);

/// Series colours (colour-blind friendly, Okabe–Ito).
const COLORS: [RGBColor; 4] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
];

/// One bar series of a panel.
struct Series {
    name: String,
    values: Vec<Option<Summary>>,
}

/// Registers the font once per process.
fn load_font() -> Result<()> {
    let path = FONTS
        .iter()
        .find(|p| Path::new(p).is_file())
        .with_context(|| {
            format!(
                "no font for the plot at {} (Debian package fonts-dejavu-core)",
                FONTS.join(" or ")
            )
        })?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    // register_font wants 'static bytes; this runs once per process and the font is small.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{path} is not a usable font"))
}

/// Draws the plot of `results` into `path`.
pub fn draw(results: &Results, path: &Path) -> Result<()> {
    load_font()?;
    let ran = Ran(results
        .variants
        .iter()
        .filter(|(_, s)| s.skipped.is_none())
        .map(|(v, s)| (*v, s))
        .collect());
    let names: Vec<&str> = ran.0.iter().map(|(v, _)| v.label()).collect();
    let (n, conns) = (results.plan.streams, results.plan.rr_conns);
    let big = results
        .plan
        .idle
        .last()
        .map(|&i| idle_label(i))
        .unwrap_or_default();

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(50);
    title.draw(&Text::new(
        format!(
            "trueip bench — {} — median of {} rep(s), whisker = min–max{}",
            results.machine.date,
            results.plan.reps,
            if results.plan.quick {
                " — QUICK smoke run"
            } else {
                ""
            }
        ),
        (20, 14),
        (FAMILY, 24).into_font(),
    ))?;
    let panels = body.split_evenly((2, 2));
    panel(
        &panels[0],
        "Bulk throughput",
        "Gbit/s",
        &names,
        &[
            series("upload ×1", ran.pick("up1_gbps")),
            series(format!("upload ×{n}"), ran.pick("upn_gbps")),
            series("download ×1", ran.pick("down1_gbps")),
            series(format!("download ×{n}"), ran.pick("downn_gbps")),
        ],
    )?;
    panel(
        &panels[1],
        &format!("Request/response latency, {conns} keep-alive conns"),
        "µs",
        &names,
        &[
            series("p50", ran.pick("rr_p50_us")),
            series("p99", ran.pick("rr_p99_us")),
            series("p99.9", ran.pick("rr_p999_us")),
        ],
    )?;
    panel(
        &panels[2],
        "Rates",
        "thousands per second",
        &names,
        &[
            series(
                format!("requests/s ({conns} conns)"),
                ran.scaled("rr_rps", 1e3),
            ),
            series("new connections/s", ran.scaled("conn_cps", 1e3)),
            series(
                format!("HTTP requests/s ({conns} conns)"),
                ran.scaled("http_rps", 1e3),
            ),
        ],
    )?;
    panel(
        &panels[3],
        "Middle hop memory and CPU",
        "KiB / MiB / CPU s",
        &names,
        &[
            series(
                format!("RSS KiB per idle conn @{big}"),
                ran.pick(&format!("per_conn_{big}_kib")),
            ),
            series("RSS idle, MiB", ran.pick("rss_idle_mib")),
            series("CPU s per GB (download ×1)", ran.pick("down1_cpu_per_gb")),
            series("CPU s per 10k conns", ran.pick("conn_cpu_per_10k")),
        ],
    )?;
    root.present().context("writing the PNG")?;
    Ok(())
}

/// The variants that ran, in plot order: each panel's groups.
struct Ran<'a>(Vec<(Variant, &'a Samples)>);

impl Ran<'_> {
    /// The summary of metric `key` per variant (`None` where it was not measured).
    fn pick(&self, key: &str) -> Vec<Option<Summary>> {
        self.0
            .iter()
            .map(|(_, s)| s.values.get(key).and_then(|v| Summary::of(v)))
            .collect()
    }

    /// [`Ran::pick`], divided by `by` (a unit change).
    fn scaled(&self, key: &str, by: f64) -> Vec<Option<Summary>> {
        self.pick(key)
            .into_iter()
            .map(|s| {
                s.map(|s| Summary {
                    median: s.median / by,
                    min: s.min / by,
                    max: s.max / by,
                    n: s.n,
                })
            })
            .collect()
    }
}

/// One bar per variant in a panel, under `name`.
fn series(name: impl Into<String>, values: Vec<Option<Summary>>) -> Series {
    Series {
        name: name.into(),
        values,
    }
}

/// The top of a panel's axis: 1.25 × the largest value, unless one group's value is an outlier
/// (over 4× the next largest), which is then cut and labelled so the others stay readable.
fn axis_max(series: &[Series]) -> f64 {
    let mut tops: Vec<f64> = series
        .iter()
        .flat_map(|s| s.values.iter().flatten().map(|v| v.max))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    tops.sort_by(f64::total_cmp);
    match tops.as_slice() {
        [] => 1.0,
        [.., second, first] if *first > 4.0 * *second => second * 1.6,
        [.., first] => first * 1.25,
    }
}

/// One panel of grouped bars: a group per variant, a bar per series.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    names: &[&str],
    series: &[Series],
) -> Result<()> {
    let groups = names.len().max(1);
    let ymax = axis_max(series);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..groups as f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .draw()?;
    let width = 0.8 / series.len().max(1) as f64;
    for (si, s) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let bars = s.values.iter().enumerate().filter_map(|(g, v)| {
            v.map(|v| {
                let x0 = g as f64 + 0.1 + si as f64 * width;
                Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, v.median.min(ymax))],
                    color.filled(),
                )
            })
        });
        chart
            .draw_series(bars)?
            .label(s.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        let whiskers = s.values.iter().enumerate().filter_map(|(g, v)| {
            v.filter(|v| v.n > 1 && v.min < ymax).map(|v| {
                let x = g as f64 + 0.1 + si as f64 * width + width * 0.45;
                PathElement::new(
                    vec![(x, v.min), (x, v.max.min(ymax))],
                    BLACK.stroke_width(2),
                )
            })
        });
        chart.draw_series(whiskers)?;
        // Bars cut at the top of the axis carry their value instead.
        let clipped = s.values.iter().enumerate().filter_map(|(g, v)| {
            v.filter(|v| v.median > ymax).map(|v| {
                let x = g as f64 + 0.1 + si as f64 * width;
                Text::new(
                    format!("{:.0}↑", v.median),
                    (x, ymax * 0.97),
                    (FAMILY, 13).into_font().color(&BLACK),
                )
            })
        });
        chart.draw_series(clipped)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    // Group names under the axis, one word per line, drawn in pixels on the panel.
    let plot = chart.plotting_area();
    let (origin_x, origin_y) = area.get_base_pixel();
    for (g, name) in names.iter().enumerate() {
        let (px, py) = plot.map_coordinate(&(g as f64 + 0.5, 0.0));
        for (line, word) in name.split(' ').enumerate() {
            let style = TextStyle::from((FAMILY, 14).into_font()).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Top,
                ),
            );
            let y = py - origin_y + 6 + 16 * i32::try_from(line).unwrap_or(0);
            area.draw(&Text::new(word.to_owned(), (px - origin_x, y), style))?;
        }
    }
    Ok(())
}
