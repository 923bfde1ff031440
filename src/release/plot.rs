//! `run/plots/loss.svg`: train and validation loss (left axis) and the learning rate (right
//! axis) against the step, from `metrics.jsonl`. plotters' SVG backend writes plain text, so
//! the same metrics give the same bytes.

use crate::error::{Error, Result};
use plotters::prelude::*;

/// One metrics line, as far as the plot and the report need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub step: f64,
    pub loss: f64,
    pub lr: f64,
    pub val_loss: Option<f64>,
    pub val_ppl: Option<f64>,
    pub val_bpb: Option<f64>,
}

/// Parse `metrics.jsonl`; a line that is not a metrics object is an error naming its number.
pub fn parse_metrics(text: &str, origin: &str) -> Result<Vec<Point>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            Error::hint(
                format!("{origin} line {}: not JSON: {e}", i + 1),
                "the run's metrics file is damaged",
            )
        })?;
        let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let (Some(step), Some(loss), Some(lr)) = (f("step"), f("loss"), f("lr")) else {
            return Err(Error::hint(
                format!("{origin} line {}: lacks step, loss or lr", i + 1),
                "the run's metrics file is damaged",
            ));
        };
        out.push(Point {
            step,
            loss,
            lr,
            val_loss: f("val_loss"),
            val_ppl: f("val_ppl"),
            val_bpb: f("val_bpb"),
        });
    }
    Ok(out)
}

fn draw_err(e: impl std::fmt::Debug) -> Error {
    Error::msg(format!("drawing the loss plot failed: {e:?}"))
}

pub fn loss_svg(points: &[Point], title: &str) -> Result<String> {
    if points.is_empty() {
        return Err(Error::msg("no metrics to plot"));
    }
    let max_step = points.iter().map(|p| p.step).fold(1.0, f64::max);
    let losses = points.iter().map(|p| p.loss).chain(points.iter().filter_map(|p| p.val_loss));
    let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let max_lr = points.iter().map(|p| p.lr).fold(0.0, f64::max).max(1e-12) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .right_y_label_area_size(70)
            .build_cartesian_2d(0f64..max_step, (lo - pad)..(hi + pad))
            .map_err(draw_err)?
            .set_secondary_coord(0f64..max_step, 0f64..max_lr);
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("loss (nats/token)")
            .draw()
            .map_err(draw_err)?;
        chart
            .configure_secondary_axes()
            .y_desc("learning rate")
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(LineSeries::new(points.iter().map(|p| (p.step, p.loss)), &BLUE))
            .map_err(draw_err)?
            .label("train loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        let val: Vec<(f64, f64)> = points.iter().filter_map(|p| p.val_loss.map(|v| (p.step, v))).collect();
        chart
            .draw_series(LineSeries::new(val.iter().copied(), &RED))
            .map_err(draw_err)?
            .label("validation loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .draw_series(val.iter().map(|&(x, y)| Circle::new((x, y), 3, RED.filled())))
            .map_err(draw_err)?;
        chart
            .draw_secondary_series(LineSeries::new(points.iter().map(|p| (p.step, p.lr)), &GREEN))
            .map_err(draw_err)?
            .label("learning rate (right axis)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parse_and_plot_is_deterministic() {
        let text = "{\"step\":1,\"loss\":5.0,\"lr\":0.001}\n{\"step\":2,\"loss\":4.0,\"lr\":0.002,\"val_loss\":4.5}\n";
        let p = parse_metrics(text, "m").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].val_loss, Some(4.5));
        let a = loss_svg(&p, "t").unwrap();
        assert!(a.starts_with("<svg") && a.contains("validation loss"), "{}", &a[..200.min(a.len())]);
        assert_eq!(a, loss_svg(&p, "t").unwrap());
        let e = parse_metrics("{\"step\":1}\n", "m.jsonl").unwrap_err().to_string();
        assert!(e.contains("m.jsonl line 1"), "{e}");
    }
}
