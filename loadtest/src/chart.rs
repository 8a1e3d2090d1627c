//! `--report DIR`: an HTML page with SVG charts of F3 runs — the ramp curve (p99
//! against publish rate) of every target in the folder, and each target's latency
//! percentiles and publish rate over time.
//!
//! Each run writes `f3-<target>.json` into the folder and redraws the page from every
//! `f3-*.json` there, so running the ramp against Harvest and then against nats-server
//! with the same `--report DIR` gives one page comparing both.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

use crate::ramp::RampSummary;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 420;

/// Colour of a target's series.
fn colour(target: &str) -> RGBColor {
    match target {
        "harvest" => RGBColor(0x2e, 0x7d, 0x32),
        "nats" => RGBColor(0x15, 0x65, 0xc0),
        _ => RGBColor(0x6a, 0x1b, 0x9a),
    }
}

/// Writes `summary` and the page into `dir`; returns the page's path.
pub fn write_report(dir: &Path, summary: &RampSummary) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let own = dir.join(format!("f3-{}.json", summary.target));
    std::fs::write(&own, serde_json::to_vec_pretty(summary)?)
        .with_context(|| format!("writing {}", own.display()))?;
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("f3-") && name.ends_with(".json") {
            let text = std::fs::read(entry.path())?;
            match serde_json::from_slice::<RampSummary>(&text) {
                Ok(run) => runs.push(run),
                Err(e) => crate::report::note(None, format!("report: skipping {name}: {e}")),
            }
        }
    }
    runs.sort_by(|a, b| a.target.cmp(&b.target));
    let ramp_svg = dir.join("ramp.svg");
    ramp_chart(&ramp_svg, &runs)?;
    for run in &runs {
        timeline_chart(&dir.join(format!("latency-{}.svg", run.target)), run)?;
    }
    let page = dir.join("index.html");
    std::fs::write(&page, html(&runs)).with_context(|| format!("writing {}", page.display()))?;
    Ok(page)
}

/// p99 (log) against publish rate (log), one line per target, and the limit.
fn ramp_chart(path: &Path, runs: &[RampSummary]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let rates = runs.iter().flat_map(|r| r.steps.iter().map(|s| s.rate));
    let (lo, hi) = rates.fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(r), hi.max(r)));
    let (lo, hi) = if hi > 0.0 {
        (lo / 1.5, hi * 1.5)
    } else {
        (50.0, 200.0)
    };
    let worst = runs
        .iter()
        .flat_map(|r| r.steps.iter().filter_map(|s| s.p99_ms))
        .fold(200.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "F3: p99 delivery latency by publish rate",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), (0.1f64..worst * 1.5).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("publish rate, msgs/s (one subject / one room)")
        .y_desc("p99, ms")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(plot_err)?;
    if let Some(limit) = runs.first().map(|r| r.p99_limit_ms) {
        chart
            .draw_series(LineSeries::new(
                [(lo, limit), (hi, limit)],
                RED.mix(0.6).stroke_width(1),
            ))
            .map_err(plot_err)?
            .label(format!("limit {limit} ms"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.mix(0.6)));
    }
    for run in runs {
        let c = colour(&run.target);
        let points: Vec<(f64, f64)> = run
            .steps
            .iter()
            .filter_map(|s| s.p99_ms.map(|p| (s.rate, p.max(0.1))))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
            .map_err(plot_err)?
            .label(format!(
                "{}: max {:.0} msgs/s at p99 ≤ {} ms",
                run.target, run.max_rate_at_p99_100ms, run.p99_limit_ms
            ))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(run.steps.iter().filter_map(|s| {
                let p = s.p99_ms?.max(0.1);
                Some(if s.passed {
                    Circle::new((s.rate, p), 4, c.filled())
                } else {
                    Circle::new((s.rate, p), 5, RED.stroke_width(2))
                })
            }))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// p50 and p99 per second of send time (top) and messages sent per second (bottom).
fn timeline_chart(path: &Path, run: &RampSummary) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (WIDTH, HEIGHT + 160)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(HEIGHT);
    let end = run.timeline.len().max(1) as f64;
    let worst = run
        .timeline
        .iter()
        .filter_map(|s| s.p99_ms)
        .fold(200.0f64, f64::max);
    let c = colour(&run.target);
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("{}: delivery latency over time", run.target),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, (0.1f64..worst * 1.5).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .y_desc("ms")
        .y_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, run.p99_limit_ms), (end, run.p99_limit_ms)],
            RED.mix(0.6),
        ))
        .map_err(plot_err)?
        .label(format!("limit {} ms", run.p99_limit_ms))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.mix(0.6)));
    for (name, pick, style) in [
        (
            "p50",
            (|s: &crate::ramp::Second| s.p50_ms) as fn(&crate::ramp::Second) -> Option<f64>,
            c.mix(0.5).stroke_width(1),
        ),
        ("p99", |s: &crate::ramp::Second| s.p99_ms, c.stroke_width(2)),
    ] {
        // One line per run of consecutive seconds with samples (drains leave gaps).
        let mut segments: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for s in &run.timeline {
            match pick(s) {
                Some(v) => segments
                    .last_mut()
                    .expect("never empty")
                    .push((s.t_s as f64 + 0.5, v.max(0.1))),
                None => segments.push(Vec::new()),
            }
        }
        let mut first = true;
        for segment in segments.into_iter().filter(|s| !s.is_empty()) {
            let series = chart
                .draw_series(LineSeries::new(segment, style))
                .map_err(plot_err)?;
            if first {
                series
                    .label(name)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
                first = false;
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(plot_err)?;

    let most = run
        .timeline
        .iter()
        .map(|s| s.sent)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut rate = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end, 0f64..most * 1.15)
        .map_err(plot_err)?;
    rate.configure_mesh()
        .x_desc("seconds since the ramp started (by send time)")
        .y_desc("sent/s")
        .y_labels(4)
        .draw()
        .map_err(plot_err)?;
    rate.draw_series(run.timeline.iter().map(|s| {
        Rectangle::new(
            [
                (s.t_s as f64 + 0.1, 0.0),
                (s.t_s as f64 + 0.9, s.sent as f64),
            ],
            c.mix(0.6).filled(),
        )
    }))
    .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e:?}")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.1}"))
}

/// The page: headline figures, the ratio when Harvest and NATS are both there, the
/// charts, and every step.
fn html(runs: &[RampSummary]) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>F3 fan-out ramp</title>\
         <style>body{font-family:system-ui,sans-serif;margin:2em auto;max-width:960px;color:#222}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;\
         text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}.fail{color:#b00020}\
         .big{font-size:1.6em;font-weight:600}img{max-width:100%}</style></head><body>\
         <h1>F3 — one room against one NATS subject</h1>",
    );
    let rate = |t: &str| {
        runs.iter()
            .find(|r| r.target == t)
            .map(|r| r.max_rate_at_p99_100ms)
    };
    if let (Some(h), Some(n)) = (rate("harvest"), rate("nats")) {
        let ratio = if n > 0.0 {
            format!("{:.2}×", h / n)
        } else {
            "n/a (nats-server passed no step)".into()
        };
        let _ = write!(
            out,
            "<p class=\"big\">Harvest ÷ nats-server on <code>max_rate_at_p99_100ms</code>: {ratio}</p>"
        );
    }
    out.push_str(
        "<table><tr><th class=\"l\">target</th><th>subscribers</th><th>message bytes</th>\
         <th>max_rate_at_p99_100ms</th><th class=\"l\">stopped</th><th>client-bound</th></tr>",
    );
    for r in runs {
        let _ = write!(
            out,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td class=\"l\">{}</td><td>{}</td></tr>",
            esc(&r.target),
            r.subscribers_connected,
            r.message_bytes,
            r.max_rate_at_p99_100ms,
            esc(&r.stop_reason),
            r.client_bound
        );
    }
    out.push_str("</table><img src=\"ramp.svg\" alt=\"p99 by publish rate\">");
    for r in runs {
        let _ = write!(
            out,
            "<h2>{t}</h2><img src=\"latency-{t}.svg\" alt=\"{t} latency over time\">\
             <table><tr><th>rate/s</th><th>published</th><th>expected</th><th>received</th>\
             <th>lost</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th>\
             <th>server cores</th><th>client cores</th><th class=\"l\">verdict</th></tr>",
            t = esc(&r.target)
        );
        for s in &r.steps {
            let _ = write!(
                out,
                "<tr{}><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td class=\"l\">{}</td></tr>",
                if s.passed { "" } else { " class=\"fail\"" },
                s.rate,
                s.published,
                s.expected,
                s.received,
                s.lost,
                opt(s.p50_ms),
                opt(s.p90_ms),
                opt(s.p99_ms),
                opt(s.max_ms),
                s.server_cpu_cores
                    .map_or_else(|| "–".into(), |c| format!("{c:.2}")),
                s.client_cpu_cores,
                if s.passed {
                    "pass".into()
                } else {
                    esc(&s.verdict)
                }
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ramp::{Second, StepSummary};

    fn run(target: &str, max: f64) -> RampSummary {
        RampSummary {
            max_rate_at_p99_100ms: max,
            target: target.into(),
            p99_limit_ms: 100.0,
            steps: vec![
                StepSummary {
                    rate: 100.0,
                    p99_ms: Some(3.0),
                    passed: true,
                    ..Default::default()
                },
                StepSummary {
                    rate: 200.0,
                    p99_ms: Some(250.0),
                    verdict: "p99 250 ms > 100 ms".into(),
                    ..Default::default()
                },
            ],
            timeline: (0..20)
                .map(|t| Second {
                    t_s: t,
                    sent: 100,
                    p50_ms: (t % 7 != 6).then_some(1.0),
                    p99_ms: (t % 7 != 6).then_some(5.0),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn report_holds_every_target_and_the_ratio() {
        let dir = std::env::temp_dir().join(format!("f3-report-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_report(&dir, &run("nats", 100.0)).unwrap();
        let page = write_report(&dir, &run("harvest", 400.0)).unwrap();
        let html = std::fs::read_to_string(page).unwrap();
        assert!(html.contains("4.00×"), "{html}");
        assert!(html.contains("latency-harvest.svg") && html.contains("latency-nats.svg"));
        let svg = std::fs::read_to_string(dir.join("ramp.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("harvest: max 400"));
        assert!(dir.join("latency-nats.svg").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
