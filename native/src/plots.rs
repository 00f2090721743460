//! Training curves and metric comparisons as SVG files, read from the runs' metrics JSONL: what a
//! person looks at after a run rather than reading numbers.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

/// One line of a chart: a label and (x, y) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// `(step, value)` of a numeric field in each JSONL line that has both (lines without it, e.g.
/// evaluation records among step records, are skipped).
pub fn field_series(jsonl: &str, x: &str, y: &str) -> Vec<(f64, f64)> {
    jsonl
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get(x)?.as_f64()?, v.get(y)?.as_f64()?)))
        .collect()
}

/// Each point's y replaced by the mean of the last `window` points' (fewer at the start), so a
/// noisy per-step metric shows its trend.
pub fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let w = window.max(1);
    (0..points.len())
        .map(|i| {
            let span = &points[(i + 1).saturating_sub(w)..=i];
            (points[i].0, span.iter().map(|p| p.1).sum::<f64>() / span.len() as f64)
        })
        .collect()
}

const COLORS: [RGBColor; 5] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RED, BLACK];

/// A line chart of one or more series, written atomically to `path`.
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> anyhow::Result<()> {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).collect();
    anyhow::ensure!(!all.is_empty(), "{}: nothing to plot for {title}", path.display());
    let (x0, x1) = bounds(all.iter().map(|p| p.0));
    let (y0, y1) = bounds(all.iter().map(|p| p.1));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        if series.len() > 1 || !series[0].label.is_empty() {
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        }
        root.present()?;
    }
    crate::fetch::write_atomic(path, svg.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// A range with a little room around the values (and never empty).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let pad = ((hi - lo).abs() * 0.05).max(1e-3);
    (lo - pad, hi + pad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_from_jsonl_skip_lines_without_the_field() {
        let text = "{\"step\":1,\"loss\":2.5}\n{\"step\":0,\"eval_nll\":3.0}\nnot json\n{\"step\":2,\"loss\":2.0}\n";
        assert_eq!(field_series(text, "step", "loss"), vec![(1.0, 2.5), (2.0, 2.0)]);
    }

    #[test]
    fn moving_average_trails_over_the_window() {
        let p = [(1.0, 1.0), (2.0, 3.0), (3.0, 5.0), (4.0, 0.0)];
        assert_eq!(moving_average(&p, 1), p.to_vec());
        assert_eq!(moving_average(&p, 2), vec![(1.0, 1.0), (2.0, 2.0), (3.0, 4.0), (4.0, 2.5)]);
        assert_eq!(moving_average(&p, 10)[3], (4.0, 2.25));
    }

    #[test]
    fn a_chart_is_an_svg_with_its_title_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let s = vec![
            Series { label: "rank-grpo".into(), points: vec![(1.0, 0.1), (2.0, 0.3)] },
            Series { label: "grpo".into(), points: vec![(1.0, 0.2), (2.0, 0.25)] },
        ];
        line_chart(&path, "NDCG@20 of samples", "step", "NDCG@20", &s).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("NDCG@20 of samples") && svg.contains("rank-grpo"));
        assert!(line_chart(&path, "empty", "x", "y", &[Series { label: String::new(), points: vec![] }]).is_err());
    }
}
