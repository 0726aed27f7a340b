//! Draws a [`Timeline`] as an SVG with `plotters`: CPU usage, limit and request (cores)
//! over time on top, each scaling action a dashed vertical line labelled `old→new`, and the
//! p99 latency (ms) below on the same time axis. Time is in seconds from the first sample.
//!
//! Pure apart from [`write_svg`]: [`svg`] returns the document, so tests check what was drawn.

use std::path::Path;

use anyhow::{Context as _, Result};
use plotters::prelude::*;

use crate::timeline::Timeline;

const WIDTH: u32 = 1000;
const HEIGHT: u32 = 620;
/// Height of the CPU panel; the latency panel gets the rest.
const CPU_PANEL: u32 = 400;

const USAGE: RGBColor = RGBColor(31, 119, 180);
const LIMIT: RGBColor = RGBColor(214, 39, 40);
const REQUEST: RGBColor = RGBColor(255, 127, 14);
const LATENCY: RGBColor = RGBColor(44, 160, 44);
const ACTION: RGBColor = RGBColor(120, 120, 120);

/// `1.5` cores as `1500m`.
fn millicores(cores: f64) -> String {
    format!("{:.0}m", cores * 1000.0)
}

/// A limit series drawn as steps: each value holds until the next sample.
fn steps(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    for (i, &(x, y)) in points.iter().enumerate() {
        if let Some(&(_, previous)) = i.checked_sub(1).and_then(|p| points.get(p)) {
            out.push((x, previous));
        }
        out.push((x, y));
    }
    out
}

/// The SVG document of `timeline`.
pub fn svg(timeline: &Timeline) -> Result<String> {
    let all_times = [
        &timeline.cpu_usage,
        &timeline.cpu_limit,
        &timeline.cpu_request,
        &timeline.p99_ms,
    ]
    .into_iter()
    .flatten()
    .map(|&(t, _)| t);
    let (t0, t1) = all_times.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), t| {
        (lo.min(t), hi.max(t))
    });
    let (t0, span) = if t0.is_finite() {
        (t0, (t1 - t0).max(1.0))
    } else {
        (0.0, 1.0)
    };
    let rel = |points: &[(f64, f64)]| -> Vec<(f64, f64)> {
        points.iter().map(|&(t, v)| (t - t0, v)).collect()
    };
    let cpu_max = [
        &timeline.cpu_usage,
        &timeline.cpu_limit,
        &timeline.cpu_request,
    ]
    .into_iter()
    .flatten()
    .map(|&(_, v)| v)
    .fold(0.0_f64, f64::max);
    let cpu_top = (cpu_max * 1.2).max(0.1);
    let latency_top = (timeline.p99_ms.iter().map(|&(_, v)| v).fold(0.0, f64::max) * 1.15).max(1.0);

    let mut document = String::new();
    {
        let root = SVGBackend::with_string(&mut document, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(CPU_PANEL);

        let mut cpu = ChartBuilder::on(&top)
            .caption(
                format!("{}: CPU and scaling actions", timeline.title),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..span, 0.0..cpu_top)?;
        cpu.configure_mesh()
            .y_desc("CPU (cores)")
            .x_desc("seconds")
            .draw()?;
        cpu.draw_series(LineSeries::new(
            rel(&timeline.cpu_usage),
            USAGE.stroke_width(2),
        ))?
        .label("usage")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], USAGE));
        cpu.draw_series(LineSeries::new(
            steps(&rel(&timeline.cpu_limit)),
            LIMIT.stroke_width(2),
        ))?
        .label("limit")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], LIMIT));
        cpu.draw_series(LineSeries::new(steps(&rel(&timeline.cpu_request)), REQUEST))?
            .label("request")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], REQUEST));
        for action in &timeline.actions {
            let x = action.at - t0;
            cpu.draw_series(DashedLineSeries::new(
                [(x, 0.0), (x, cpu_top)],
                4,
                4,
                ACTION.into(),
            ))?;
            let arrow = if action.to > action.from {
                "↑"
            } else {
                "↓"
            };
            cpu.draw_series(std::iter::once(Text::new(
                format!(
                    "{arrow} {}→{}",
                    millicores(action.from),
                    millicores(action.to)
                ),
                (x, cpu_top * 0.97),
                ("sans-serif", 13).into_font().color(&BLACK),
            )))?;
        }
        cpu.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()?;

        let mut latency = ChartBuilder::on(&bottom)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..span, 0.0..latency_top)?;
        latency
            .configure_mesh()
            .y_desc("p99 latency (ms)")
            .x_desc("seconds")
            .draw()?;
        latency
            .draw_series(LineSeries::new(
                rel(&timeline.p99_ms),
                LATENCY.stroke_width(2),
            ))?
            .label("p99 latency")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], LATENCY));
        latency
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.85))
            .draw()?;
        root.present()?;
    }
    Ok(document)
}

/// Writes the SVG of `timeline` to `path`.
pub fn write_svg(timeline: &Timeline, path: &Path) -> Result<()> {
    let document = svg(timeline)?;
    std::fs::write(path, document).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::{Action, actions_from_limits};

    fn fixture() -> Timeline {
        let t0 = 1_700_000_000.0;
        let cpu_limit: Vec<_> = (0..24)
            .map(|i| {
                let at = t0 + f64::from(i) * 5.0;
                (at, if (8..16).contains(&i) { 0.95 } else { 0.2 })
            })
            .collect();
        Timeline {
            title: "default/pi-0/cell".into(),
            cpu_usage: (0..24)
                .map(|i| {
                    (
                        t0 + f64::from(i) * 5.0,
                        if (4..14).contains(&i) { 0.9 } else { 0.05 },
                    )
                })
                .collect(),
            cpu_request: cpu_limit.iter().map(|&(t, v)| (t, v / 2.0)).collect(),
            actions: actions_from_limits(&cpu_limit),
            cpu_limit,
            p99_ms: (0..24)
                .map(|i| (t0 + f64::from(i) * 5.0, 20.0 + f64::from(i)))
                .collect(),
        }
    }

    #[test]
    fn the_picture_shows_every_series_and_action() {
        let timeline = fixture();
        assert_eq!(
            timeline.actions,
            vec![
                Action {
                    at: 1_700_000_040.0,
                    from: 0.2,
                    to: 0.95
                },
                Action {
                    at: 1_700_000_080.0,
                    from: 0.95,
                    to: 0.2
                }
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.svg");
        write_svg(&timeline, &path).unwrap();
        let document = std::fs::read_to_string(&path).unwrap();
        assert!(document.starts_with("<svg"), "{}", &document[..80]);
        for text in [
            "default/pi-0/cell: CPU and scaling actions",
            "usage",
            "limit",
            "request",
            "p99 latency",
            "↑ 200m→950m",
            "↓ 950m→200m",
        ] {
            assert!(document.contains(text), "{text:?} is not in the picture");
        }
        // One polyline per series (usage, limit, request, p99).
        let polylines = document.matches("<polyline").count();
        assert!(polylines >= 4, "{polylines} polylines");
    }

    #[test]
    fn an_empty_timeline_still_draws_axes() {
        let document = svg(&Timeline {
            title: "nothing".into(),
            ..Timeline::default()
        })
        .unwrap();
        assert!(document.contains("nothing: CPU and scaling actions"));
        assert!(!document.contains('→'), "no actions without a limit series");
    }

    #[test]
    fn limits_are_drawn_as_steps() {
        assert_eq!(
            steps(&[(0.0, 1.0), (5.0, 2.0), (10.0, 2.0)]),
            vec![
                (0.0, 1.0),
                (5.0, 1.0),
                (5.0, 2.0),
                (10.0, 1.0 * 2.0),
                (10.0, 2.0)
            ]
        );
    }
}
