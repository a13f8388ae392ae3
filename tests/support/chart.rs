//! A small SVG line chart: panels of series over time, for the soak's report.

use std::fmt::Write;

/// One line: its name and its points (seconds, value).
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title, the unit of its values, and its lines.
pub struct Panel {
    pub title: String,
    pub unit: String,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 180.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 30.0;
const GAP: f64 = 50.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// The panels stacked, each with its own value axis and a shared time axis.
pub fn svg(title: &str, panels: &[Panel]) -> String {
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP) + 10.0;
    let t_max = panels
        .iter()
        .flat_map(|p| &p.series)
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0_f64, f64::max);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="18" font-size="14">{}</text>"#,
        escape(title)
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    for (i, panel) in panels.iter().enumerate() {
        let y0 = TOP + i as f64 * (PANEL_HEIGHT + GAP) + 10.0;
        let v_max = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0_f64, f64::max)
            .max(1e-9)
            * 1.1;
        let _ = write!(
            out,
            r##"<text x="{LEFT}" y="{}" font-weight="bold">{} ({})</text><rect x="{LEFT}" y="{y0}" width="{plot_w}" height="{PANEL_HEIGHT}" fill="none" stroke="#999"/>"##,
            y0 - 4.0,
            escape(&panel.title),
            escape(&panel.unit)
        );
        for tick in 0..=4 {
            let v = v_max * f64::from(tick) / 4.0;
            let y = y0 + PANEL_HEIGHT - PANEL_HEIGHT * f64::from(tick) / 4.0;
            let _ = write!(
                out,
                r##"<text x="{}" y="{}" text-anchor="end">{}</text><line x1="{LEFT}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/>"##,
                LEFT - 4.0,
                y + 4.0,
                short(v),
                LEFT + plot_w
            );
        }
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{:.0} s</text>"#,
            LEFT + plot_w,
            y0 + PANEL_HEIGHT + 14.0,
            t_max
        );
        for (k, s) in panel.series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let points: Vec<String> = s
                .points
                .iter()
                .map(|(t, v)| {
                    format!(
                        "{:.1},{:.1}",
                        LEFT + plot_w * t / t_max,
                        y0 + PANEL_HEIGHT - PANEL_HEIGHT * v / v_max
                    )
                })
                .collect();
            let _ = write!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{colour}">{}</text>"#,
                points.join(" "),
                LEFT + plot_w + 8.0,
                y0 + 12.0 + 14.0 * k as f64,
                escape(&s.name)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
