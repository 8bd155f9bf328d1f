//! PNG figures of a tree (plotters): the weight histogram of one kernel at every node (the
//! guide's density figure: pruning's spike at 0, clustering's k lines) and accuracy against
//! gzip size of every node.

use std::path::Path;

use plotters::prelude::*;

use crate::CollabError;
use crate::tree::Leaf;

/// The labels' font: `COLLAB_FONT` (a TrueType file) when set and readable, else Noto Sans
/// Regular compiled into the binary (`ttf-noto-sans`), so figures are drawn on any machine.
fn font_ready() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        let chosen =
            std::env::var("COLLAB_FONT")
                .ok()
                .and_then(|path| match std::fs::read(&path) {
                    Ok(bytes) => Some(&*Box::leak(bytes.into_boxed_slice())),
                    Err(e) => {
                        tracing::warn!("COLLAB_FONT={path}: {e}; using the built-in font");
                        None
                    }
                });
        for bytes in chosen.into_iter().chain([ttf_noto_sans::REGULAR]) {
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
        tracing::warn!("no usable TrueType font: figures skipped");
        false
    })
}

/// Draw a `size` (width, height) figure with `draw` into an RGB buffer and write it to `path`
/// as a PNG through `image` (the workspace's one image stack; plotters' own encoder would
/// compile a second). Returns `Ok(true)`.
fn png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<bool, CollabError> {
    let mut buffer = vec![0u8; size.0 as usize * size.1 as usize * 3];
    draw(BitMapBackend::with_buffer(&mut buffer, size).into_drawing_area()).map_err(|reason| {
        CollabError::Plot {
            path: path.to_path_buf(),
            reason,
        }
    })?;
    image::save_buffer_with_format(
        path,
        &buffer,
        size.0,
        size.1,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|e| CollabError::checkpoint(path, e))?;
    Ok(true)
}

/// A drawing error's message; [`png`] says which figure.
fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Histograms of `layer`'s weights (dequantized from each node's int8 file), one panel per
/// node, into `path`. Returns whether a figure was written.
pub fn density(
    path: &Path,
    layer: &str,
    nodes: &[(String, Vec<f32>)],
) -> Result<bool, CollabError> {
    if nodes.is_empty() || !font_ready() {
        return Ok(false);
    }
    let (lo, hi) = nodes
        .iter()
        .flat_map(|(_, v)| v.iter())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        });
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else {
        (lo - 1.0, hi + 1.0)
    };
    const BINS: usize = 120;
    let cols = 2usize;
    let rows = nodes.len().div_ceil(cols);
    png(path, (1000, 260 * rows as u32), |root| {
        root.fill(&WHITE).map_err(err)?;
        let root = root
            .titled(
                &format!("weights of {layer} at each node"),
                ("sans-serif", 22),
            )
            .map_err(err)?;
        for (area, (name, values)) in root.split_evenly((rows, cols)).iter().zip(nodes) {
            let mut counts = vec![0u32; BINS];
            for v in values {
                let b = (((v - lo) / (hi - lo)) * BINS as f32) as usize;
                counts[b.min(BINS - 1)] += 1;
            }
            let top = counts.iter().copied().max().unwrap_or(1).max(1);
            let width = (hi - lo) / BINS as f32;
            let mut chart = ChartBuilder::on(area)
                .caption(name, ("sans-serif", 16))
                .margin(8)
                .x_label_area_size(24)
                .y_label_area_size(44)
                .build_cartesian_2d(lo..hi, 0u32..top + top / 10 + 1)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_labels(6)
                .y_labels(4)
                .disable_mesh()
                .draw()
                .map_err(err)?;
            chart
                .draw_series(
                    counts
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| **c > 0)
                        .map(|(i, c)| {
                            let x0 = lo + i as f32 * width;
                            Rectangle::new([(x0, 0), (x0 + width, *c)], BLUE.mix(0.7).filled())
                        }),
                )
                .map_err(err)?;
        }
        root.present().map_err(err)?;
        Ok(())
    })
}

/// int8 accuracy against gzip size of every node, labelled, into `path`.
pub fn accuracy_vs_size(path: &Path, leaves: &[Leaf]) -> Result<bool, CollabError> {
    accuracy_vs(
        path,
        leaves,
        "int8 accuracy vs gzip -9 size",
        "gzip -9 KiB",
        |l| Some(l.gzip_bytes as f64 / 1024.0),
    )
}

/// int8 accuracy against latency of every measured node, labelled, into `path`: our
/// interpreter's median on this machine, or with `npu` Vela's estimate for the NPU.
pub fn accuracy_vs_latency(path: &Path, leaves: &[Leaf], npu: bool) -> Result<bool, CollabError> {
    let (title, x_desc) = match npu {
        true => ("int8 accuracy vs NPU time (Vela's estimate)", "NPU ms"),
        false => (
            "int8 accuracy vs latency (our interpreter, batch 1, one thread)",
            "median ms",
        ),
    };
    accuracy_vs(path, leaves, title, x_desc, |l| {
        let d = l.device.as_ref()?;
        match npu {
            true => d.npu.as_ref().map(|n| n.inference_ms),
            false => Some(d.latency.median_ms),
        }
    })
}

/// int8 accuracy against `x` of every node that has one, labelled, into `path`; `false` when
/// no node has one (or no font is available).
fn accuracy_vs(
    path: &Path,
    leaves: &[Leaf],
    title: &str,
    x_desc: &str,
    x: impl Fn(&Leaf) -> Option<f64>,
) -> Result<bool, CollabError> {
    let points: Vec<(f64, f64, &str)> = leaves
        .iter()
        .filter_map(|l| Some((x(l)?, 100.0 * l.int8_accuracy, l.stage.as_str())))
        .collect();
    if points.is_empty() || !font_ready() {
        return Ok(false);
    }
    let range = |v: &dyn Fn(&(f64, f64, &str)) -> f64| {
        points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                (a.min(v(p)), b.max(v(p)))
            })
    };
    let (x0, x1) = range(&|p| p.0);
    let (y0, y1) = range(&|p| p.1);
    let pad_x = ((x1 - x0) * 0.1).max(x1.abs() * 0.02).max(1e-3);
    let pad_y = ((y1 - y0) * 0.15).max(0.5);
    png(path, (900, 600), |root| {
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            // Room on the right for the rightmost point's label.
            .build_cartesian_2d((x0 - pad_x)..(x1 + 3.0 * pad_x), (y0 - pad_y)..(y1 + pad_y))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("int8 top-1 %")
            .draw()
            .map_err(err)?;
        chart
            .draw_series(points.iter().map(|(x, y, stage)| {
                EmptyElement::at((*x, *y))
                    + Circle::new((0, 0), 5, RED.filled())
                    + Text::new(stage.to_string(), (8, -6), ("sans-serif", 14))
            }))
            .map_err(err)?;
        root.present().map_err(err)?;
        Ok(())
    })
}

/// One panel of the learning curve: area, title, y label, scale, and two series (label, value
/// of an epoch, colour).
type Panel<'a, 'b, S> = (
    &'a DrawingArea<BitMapBackend<'b>, S>,
    &'static str,
    &'static str,
    f64,
    [(
        &'static str,
        fn(&crate::learn::EpochMetrics) -> f64,
        RGBColor,
    ); 2],
);

/// The learning curve of a training run into `path`: training and validation loss (left) and
/// accuracy (right) per epoch. Returns whether a figure was written.
pub fn learning_curve(
    path: &Path,
    history: &[crate::learn::EpochMetrics],
) -> Result<bool, CollabError> {
    if history.is_empty() || !font_ready() {
        return Ok(false);
    }
    let epochs = history.last().map_or(1, |h| h.epoch).max(2) as f64;
    png(path, (1200, 500), |root| {
        root.fill(&WHITE).map_err(err)?;
        let (left, right) = root.split_horizontally(600);
        let finite = |v: f64| v.is_finite().then_some(v);
        let panels: [Panel<'_, '_, _>; 2] = [
            (
                &left,
                "loss",
                "cross-entropy",
                1.0,
                [
                    ("train", |h| h.loss, BLUE),
                    ("validation", |h| h.val_loss, RED),
                ],
            ),
            (
                &right,
                "accuracy",
                "top-1 %",
                100.0,
                [
                    ("train", |h| h.train_accuracy, BLUE),
                    ("validation", |h| h.val_accuracy, RED),
                ],
            ),
        ];
        for (area, title, y_desc, scale, series) in panels {
            let values: Vec<f64> = history
                .iter()
                .flat_map(|h| series.iter().filter_map(move |s| finite(s.1(h) * scale)))
                .collect();
            let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            // A flat series (every epoch at 100%, say) gets a unit of room around its value.
            let (lo, hi) = match (lo.is_finite(), hi > lo) {
                (true, true) => (lo, hi),
                (true, false) => (lo - 1.0, hi + 1.0),
                (false, _) => (0.0, 1.0),
            };
            let pad = (hi - lo) * 0.08;
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 22))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d(1.0..epochs, (lo - pad)..(hi + pad))
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc(y_desc)
                .draw()
                .map_err(err)?;
            for (label, value, color) in series {
                let points: Vec<(f64, f64)> = history
                    .iter()
                    .filter_map(|h| Some((h.epoch as f64, finite(value(h) * scale)?)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
                chart
                    .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(err)?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
        Ok(())
    })
}
