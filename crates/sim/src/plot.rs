//! SVG plots of simulations and benchmarks (plotters' SVG backend: no fonts or system
//! libraries needed, and the output is a pure function of the data, so it is reproducible).

use std::time::Duration;

use plotters::coord::ranged1d::SegmentValue;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::SimReport;
use keyvault_failover::BreakerState;

/// One line of a plot: name and points.
pub struct Line {
    /// Its name in the legend.
    pub name: String,
    /// `(x, y)` points, x in seconds.
    pub points: Vec<(f64, f64)>,
}

/// One lane of coloured bands: name and `(from, to, label)` spans.
pub struct Lane {
    /// Its name beside the lane.
    pub name: String,
    /// `(from, to, label)` spans, in seconds; the label picks the colour.
    pub spans: Vec<(f64, f64, String)>,
}

fn color_of(label: &str, regions: &[String]) -> RGBColor {
    match label {
        "closed" => RGBColor(76, 175, 80),
        "half-open" => RGBColor(255, 167, 38),
        "open" => RGBColor(229, 57, 53),
        "cache-only" => RGBColor(158, 158, 158),
        _ => {
            let i = regions.iter().position(|r| r == label).unwrap_or(0);
            let c = Palette99::pick(i + 2).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

/// Draws up to two line panels over time (the first on a log scale) and a band panel.
pub fn timeline_svg(
    title: &str,
    x_max: f64,
    top: (&str, &[Line]),
    middle: (&str, &[Line]),
    lanes: &[Lane],
    regions: &[String],
) -> String {
    let mut out = String::new();
    let drawn = draw(&mut out, title, x_max, top, middle, lanes, regions);
    match drawn {
        Ok(()) => out,
        Err(e) => format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\"><text x=\"10\" y=\"20\">plot failed: {}</text></svg>",
            e.to_string().replace('<', "&lt;")
        ),
    }
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(
    out: &mut String,
    title: &str,
    x_max: f64,
    top: (&str, &[Line]),
    middle: (&str, &[Line]),
    lanes: &[Lane],
    regions: &[String],
) -> DrawResult {
    let band_h = 60 + 28 * lanes.len() as u32;
    let root = SVGBackend::with_string(out, (1100, 640 + band_h)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    let (a, rest) = root.split_vertically(340);
    let (b, c) = rest.split_vertically(280);
    let x_max = x_max.max(1.0);

    let mut chart = panel(&a, top.0)
        .build_cartesian_2d(0f64..x_max, (0.01f64..highest(top.1) * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("ms (log)")
        .draw()?;
    lines_with_legend(&mut chart, top.1, 0.01)?;

    let mut chart =
        panel(&b, middle.0).build_cartesian_2d(0f64..x_max, 0f64..highest(middle.1) * 1.1)?;
    chart.configure_mesh().x_desc("seconds").draw()?;
    lines_with_legend(&mut chart, middle.1, f64::MIN)?;

    if !lanes.is_empty() {
        let n = lanes.len() as u32;
        let names: Vec<String> = lanes.iter().map(|l| l.name.clone()).collect();
        let mut chart = ChartBuilder::on(&c)
            .caption(
                "bands: active region, breaker states (green closed, orange half-open, red open)",
                ("sans-serif", 13),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(110)
            .build_cartesian_2d(0f64..x_max, (0u32..n).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n as usize)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    names.get(*i as usize).cloned().unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .draw()?;
        for (i, lane) in lanes.iter().enumerate() {
            let i = i as u32;
            chart.draw_series(lane.spans.iter().map(|(x0, x1, label)| {
                Rectangle::new(
                    [
                        (*x0, SegmentValue::Exact(i)),
                        (x1.min(x_max), SegmentValue::Exact(i + 1)),
                    ],
                    color_of(label, regions).filled(),
                )
            }))?;
            // Region names on the route lane.
            chart.draw_series(
                lane.spans
                    .iter()
                    .filter(|(x0, x1, l)| (x1 - x0) > x_max / 25.0 && !is_state(l))
                    .map(|(x0, _, label)| {
                        Text::new(
                            label.clone(),
                            (*x0 + x_max / 200.0, SegmentValue::CenterOf(i)),
                            ("sans-serif", 12).into_font().color(&WHITE),
                        )
                    }),
            )?;
        }
    }
    root.present()?;
    Ok(())
}

/// The largest value of any line (at least 1).
fn highest(lines: &[Line]) -> f64 {
    lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
}

/// A line panel's frame: caption, margins and label areas.
fn panel<'a, 'b, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, plotters::coord::Shift>,
    caption: &'b str,
) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(area);
    b.caption(caption, ("sans-serif", 14))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(64);
    b
}

/// One coloured line per series (values below `floor` raised to it) and the legend.
fn lines_with_legend<'a, DB, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>,
    lines: &[Line],
    floor: f64,
) -> DrawResult
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64>,
{
    for (i, l) in lines.iter().enumerate() {
        let color = Palette99::pick(i);
        chart
            .draw_series(LineSeries::new(
                l.points.iter().map(|&(x, y)| (x, y.max(floor))),
                color.stroke_width(2),
            ))?
            .label(l.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn is_state(l: &str) -> bool {
    matches!(l, "closed" | "half-open" | "open")
}

fn state_label(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::HalfOpen => "half-open",
        BreakerState::Open => "open",
    }
}

/// Turns a step function `(t, value)` into spans up to `end`.
pub(crate) fn spans<T: Clone>(
    steps: &[(Duration, T)],
    end: f64,
    label: impl Fn(&T) -> String,
) -> Vec<(f64, f64, String)> {
    steps
        .iter()
        .enumerate()
        .map(|(i, (t, v))| {
            let to = steps.get(i + 1).map_or(end, |n| n.0.as_secs_f64());
            (t.as_secs_f64(), to, label(v))
        })
        .filter(|(a, b, _)| b > a)
        .collect()
}

/// The simulation plot.
pub(crate) fn simulation_svg(report: &SimReport, timelines: &[crate::Timeline]) -> String {
    let end = report.duration_s;
    let mut lat = Vec::new();
    let mut err = Vec::new();
    for (c, t) in report.contenders.iter().zip(timelines) {
        let w = t.bucket.as_secs_f64();
        lat.push(Line {
            name: format!("{} mean", c.name),
            points: t
                .buckets
                .iter()
                .enumerate()
                .filter(|(_, b)| b.reads > 0)
                .map(|(i, b)| (i as f64 * w, b.lat_sum_us as f64 / b.reads as f64 / 1000.0))
                .collect(),
        });
        err.push(Line {
            name: c.name.clone(),
            points: t
                .buckets
                .iter()
                .enumerate()
                .map(|(i, b)| (i as f64 * w, b.failed as f64 / w))
                .collect(),
        });
    }
    let regions: Vec<String> = report
        .contenders
        .first()
        .map(|c| c.vaults.iter().map(|v| v.region.clone()).collect())
        .unwrap_or_default();
    let mut lanes = Vec::new();
    if let Some(t) = timelines.first().filter(|t| !t.route.is_empty()) {
        lanes.push(Lane {
            name: "active (client 0)".into(),
            spans: spans(&t.route, end, |r: &Option<String>| {
                r.clone().unwrap_or_else(|| "cache-only".into())
            }),
        });
        for (region, steps) in &t.breakers {
            lanes.push(Lane {
                name: format!("breaker {region}"),
                spans: spans(steps, end, |s| state_label(*s).to_string()),
            });
        }
    }
    timeline_svg(
        &format!(
            "{} (seed {}, {} instance(s))",
            report.scenario, report.seed, report.instances
        ),
        end,
        (
            "read latency from intended send time, mean per bucket",
            &lat,
        ),
        ("failed reads per second", &err),
        &lanes,
        &regions,
    )
}
