//! The latency-over-time picture of a restart run: for each 20 ms of the run, the
//! median, the 99th percentile and the slowest request that started in it, on a log
//! scale, with every SIGHUP marked. Drawn with `plotters` into an SVG (text is left to
//! the viewer's fonts: no font library is needed).

use std::path::Path;

use plotters::prelude::*;

/// Width of a bucket of the timeline, in ms.
const BUCKET_MS: u32 = 20;

/// A line of the picture: its name, its colour, and what it reads of a bucket.
type Series = (&'static str, RGBColor, fn(&Bucket) -> f64);

/// One bucket's latencies (µs): median, 99th percentile, maximum.
struct Bucket {
    at_s: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

fn buckets(timeline: &[(u32, u32)], from_ms: u32) -> Vec<Bucket> {
    let mut sorted: Vec<(u32, u32)> = timeline
        .iter()
        .filter(|(at, _)| *at >= from_ms)
        .map(|&(at, us)| ((at - from_ms) / BUCKET_MS, us))
        .collect();
    sorted.sort_unstable();
    let mut out = Vec::new();
    for group in sorted.chunk_by(|a, b| a.0 == b.0) {
        let n = group.len();
        let q = |f: f64| group[((n as f64 - 1.0) * f).round() as usize].1 as f64;
        out.push(Bucket {
            at_s: f64::from(group[0].0 * BUCKET_MS) / 1000.0,
            p50: q(0.5),
            p99: q(0.99),
            max: group[n - 1].1 as f64,
        });
    }
    out
}

/// Draws `timeline` (start ms since the bench's epoch, latency µs) with a mark at
/// each of `restarts` (ms since the same epoch) into the SVG file `path`.
pub fn latency_svg(
    path: &Path,
    title: &str,
    timeline: &[(u32, u32)],
    restarts: &[u32],
) -> Result<(), String> {
    let from = timeline.iter().map(|t| t.0).min().unwrap_or(0);
    let b = buckets(timeline, from);
    if b.is_empty() {
        return Err("no request to draw".into());
    }
    let end_s = b.last().map_or(1.0, |x| x.at_s) + f64::from(BUCKET_MS) / 1000.0;
    let top = b.iter().map(|x| x.max).fold(1.0, f64::max) * 1.5;
    let bottom = b.iter().map(|x| x.p50).fold(f64::MAX, f64::min).max(1.0) / 1.5;
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = SVGBackend::new(path, (1200, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..end_s, (bottom..top).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run")
        .y_desc("latency, µs (log)")
        .light_line_style(WHITE)
        .draw()
        .map_err(|e| err(&e))?;
    let marks = RGBColor(200, 200, 200);
    for &r in restarts {
        let x = f64::from(r.saturating_sub(from)) / 1000.0;
        chart
            .draw_series(LineSeries::new(
                [(x, bottom), (x, top)],
                marks.stroke_width(1),
            ))
            .map_err(|e| err(&e))?;
    }
    let series: [Series; 3] = [
        ("max", RGBColor(230, 120, 40), |x| x.max),
        ("p99", RGBColor(200, 30, 30), |x| x.p99),
        ("p50", RGBColor(30, 90, 200), |x| x.p50),
    ];
    for (name, color, f) in series {
        chart
            .draw_series(LineSeries::new(b.iter().map(|x| (x.at_s, f(x))), color))
            .map_err(|e| err(&e))?
            .label(format!("{name} per {BUCKET_MS} ms"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
