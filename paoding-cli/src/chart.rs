//! The sweep chart, drawn with plotters' SVG backend: two panels sharing the x axis
//! (parameters removed, %): accuracy (or top-1 agreement) on top, FGSM robustness below; one
//! line per method, the original model as a dashed horizontal reference line, and a legend.
//!
//! plotters is built without font support (no `ttf`/`ab_glyph` feature): its SVG backend
//! writes text as `<text>` elements with a generic `sans-serif` family, so nothing reads
//! system fonts or fontconfig, and the viewer's font renders the labels.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::CliError;
use crate::sweep::{SweepPoint, SweepReport};

/// Chart width in pixels (the SVG scales).
pub const WIDTH: u32 = 900;
/// Chart height in pixels.
pub const HEIGHT: u32 = 860;

/// Line colour of a method: fixed for the three built-in methods, so charts compare at a
/// glance; others from plotters' palette.
pub fn method_color(method: &str, index: usize) -> RGBColor {
    match method {
        "merge" => RGBColor(31, 119, 180),
        "paoding" => RGBColor(214, 39, 40),
        "magnitude" => RGBColor(44, 160, 44),
        _ => {
            let c = Palette99::pick(index + 3).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

/// Hex form of a colour, as it appears in the SVG (`#1F77B4`).
pub fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

type Metric = fn(&SweepPoint) -> Option<f64>;

struct Panel<'a> {
    caption: String,
    y_desc: &'a str,
    metric: Metric,
    reference_label: &'a str,
}

fn chart_error<E: std::fmt::Display>(e: E) -> CliError {
    CliError::Usage(format!("cannot draw the chart: {e}"))
}

/// Draw the sweep as an SVG document.
pub fn sweep_svg(report: &SweepReport) -> Result<String, CliError> {
    let mut svg = String::new();
    draw(report, &mut svg)?;
    Ok(svg)
}

fn draw(report: &SweepReport, svg: &mut String) -> Result<(), CliError> {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_error)?;
    let model = std::path::Path::new(&report.model)
        .file_name()
        .map_or(report.model.clone(), |f| f.to_string_lossy().into_owned());
    let title = if model.is_empty() {
        "Pruning sweep".to_string()
    } else {
        format!("Pruning sweep of {model}")
    };
    let root = root
        .titled(&title, ("sans-serif", 24).into_font().color(&BLACK))
        .map_err(chart_error)?;
    let (top, rest) = root.split_vertically(HEIGHT / 2 - 30);
    let (bottom, footer) = rest.split_vertically(HEIGHT / 2 - 30);
    let quality = if report.has_accuracy() {
        Panel {
            caption: "Accuracy".into(),
            y_desc: "accuracy on the labelled data (%)",
            metric: |p| p.accuracy,
            reference_label: "original model",
        }
    } else {
        Panel {
            caption: if report.data_free {
                "Top-1 agreement with the original, estimated without data (held-out check set)"
                    .into()
            } else {
                "Top-1 agreement with the original".into()
            },
            y_desc: "top-1 agreement (%)",
            metric: |p| Some(p.agreement),
            reference_label: "original model",
        }
    };
    draw_panel(&top, report, &quality)?;
    if report.original.robustness.is_some() {
        let robustness = Panel {
            caption: format!(
                "FGSM robustness at ε = {} (white-box; share of {} that keep their prediction)",
                report.fgsm_eps,
                if report.has_accuracy() {
                    "correctly classified samples"
                } else {
                    "samples"
                }
            ),
            y_desc: "robust samples (%)",
            metric: |p| p.robustness,
            reference_label: "original model",
        };
        draw_panel(&bottom, report, &robustness)?;
        let note = if report.has_accuracy() {
            "Robustness counts only the samples a model classifies correctly: where accuracy is low it rests on few samples."
        } else {
            "Robustness: samples whose prediction survives the attack, the model's own prediction as the target."
        };
        footer
            .draw(&Text::new(
                note,
                (16, 8),
                ("sans-serif", 13).into_font().color(&RGBColor(90, 90, 90)),
            ))
            .map_err(chart_error)?;
    }
    root.present().map_err(chart_error)?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    report: &SweepReport,
    panel: &Panel<'_>,
) -> Result<(), CliError> {
    let methods = report.methods();
    let reference = (panel.metric)(&report.original).map(|v| 100.0 * v);
    let values: Vec<f64> = report
        .points
        .iter()
        .filter_map(|p| (panel.metric)(p))
        .map(|v| 100.0 * v)
        .chain(reference)
        .collect();
    let low = values.iter().copied().fold(100.0f64, f64::min);
    let y_min = ((low - 2.0) / 10.0).floor().max(0.0) * 10.0;
    let x_max_data = report
        .points
        .iter()
        .map(|p| 100.0 * p.params_removed)
        .fold(0.0f64, f64::max);
    let x_max = ((x_max_data / 10.0).ceil() * 10.0).clamp(10.0, 100.0);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.caption, ("sans-serif", 17))
        .margin(12)
        .margin_right(28)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, y_min..101.0)
        .map_err(chart_error)?;
    chart
        .configure_mesh()
        .x_desc("parameters removed (%)")
        .y_desc(panel.y_desc)
        .x_labels(11)
        .y_labels(11)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 13))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()
        .map_err(chart_error)?;
    if let Some(r) = reference {
        let grey = RGBColor(90, 90, 90);
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, r), (x_max, r)],
                8,
                5,
                grey.stroke_width(2),
            ))
            .map_err(chart_error)?
            .label(format!("{} ({r:.1} %)", panel.reference_label))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 9, y)], grey.stroke_width(2)));
    }
    for (i, method) in methods.iter().enumerate() {
        let color = method_color(method, i);
        let mut line: Vec<(f64, f64)> = reference.map(|r| (0.0, r)).into_iter().collect();
        line.extend(
            report
                .points
                .iter()
                .filter(|p| &p.method == method)
                .filter_map(|p| (panel.metric)(p).map(|v| (100.0 * p.params_removed, 100.0 * v))),
        );
        let markers = line.clone();
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            .map_err(chart_error)?
            .label(method.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x - 2, y), (x + 16, y)], color.stroke_width(3))
            });
        chart
            .draw_series(
                markers
                    .into_iter()
                    .skip(usize::from(reference.is_some()))
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(chart_error)?;
    }
    // The legend goes in the corner with the least data under it.
    let mut shown: Vec<(f64, f64)> = report
        .points
        .iter()
        .filter_map(|p| (panel.metric)(p).map(|v| (100.0 * p.params_removed, 100.0 * v)))
        .collect();
    if let Some(r) = reference {
        shown.extend((0..=20).map(|i| (x_max * f64::from(i) / 20.0, r)));
    }
    let position = legend_corner(&shown, (x_max, y_min, 101.0));
    chart
        .configure_series_labels()
        .position(position)
        .margin(12)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .draw()
        .map_err(chart_error)?;
    Ok(())
}

/// The corner of the plot (lower left first, then upper right, lower right, upper left) whose
/// legend-sized region (about 40 % wide, 35 % high) covers the fewest of `points`.
fn legend_corner(
    points: &[(f64, f64)],
    (x_max, y_min, y_max): (f64, f64, f64),
) -> SeriesLabelPosition {
    let corners = [
        (SeriesLabelPosition::LowerLeft, false, false),
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::UpperLeft, false, true),
    ];
    let covered = |right: bool, upper: bool| {
        points
            .iter()
            .filter(|&&(x, y)| {
                let fx = x / x_max.max(1e-9);
                let fy = (y - y_min) / (y_max - y_min).max(1e-9);
                let in_x = if right { fx >= 0.58 } else { fx <= 0.42 };
                let in_y = if upper { fy >= 0.62 } else { fy <= 0.38 };
                in_x && in_y
            })
            .count()
    };
    let mut best = (usize::MAX, SeriesLabelPosition::LowerLeft);
    for (pos, right, upper) in corners {
        let n = covered(right, upper);
        if n < best.0 {
            best = (n, pos);
        }
    }
    best.1
}
