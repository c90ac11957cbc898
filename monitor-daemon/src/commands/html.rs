//! Self-contained HTML reports: the page builder every report renders through.
//!
//! Owns the page's look and its safety: one HTML document with inline CSS and inline SVG charts,
//! no script, no external asset, nothing fetched when it is opened (a report is handed on and
//! may be opened anywhere, offline). Every piece of text that reaches the page goes through
//! [`escape`], so a hostile value (a client address, a project name) stays text. Knows nothing
//! of what it shows: reports build a [`Page`] from headings, key-value summaries, badges,
//! [`Table`]s, [`BarChart`]s and [`TimeSeries`] charts, then [`Page::finish`] it.

use std::fmt::Write as _;

use crate::edges::alerts::time::rfc3339;
use crate::shared::model::Timestamp;

/// `text` safe as HTML (and SVG) text and as a quoted attribute value.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters have no business in a report and some are not allowed in HTML.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A verdict shown as a coloured label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Badge {
    Pass,
    Fail,
    /// Something to look at, not a failure (e.g. due soon, incomplete evidence).
    Warn,
    /// Neutral (e.g. exempt).
    Info,
}

impl Badge {
    fn class(self) -> &'static str {
        match self {
            Badge::Pass => "pass",
            Badge::Fail => "fail",
            Badge::Warn => "warn",
            Badge::Info => "info",
        }
    }

    /// The badge with `label` as its text, as HTML.
    pub(crate) fn html(self, label: &str) -> String {
        format!(
            "<span class=\"badge {}\">{}</span>",
            self.class(),
            escape(label)
        )
    }

    /// PASS or FAIL.
    pub(crate) fn outcome(pass: bool) -> (Badge, &'static str) {
        if pass {
            (Badge::Pass, "PASS")
        } else {
            (Badge::Fail, "FAIL")
        }
    }
}

/// One table cell or summary value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Cell {
    Text(String),
    /// Right-aligned, tabular digits.
    Number(String),
    /// Monospace (fingerprints, masked tokens, identifiers).
    Code(String),
    Badge(Badge, String),
    Empty,
}

impl Cell {
    pub(crate) fn text(text: impl Into<String>) -> Cell {
        Cell::Text(text.into())
    }

    pub(crate) fn number(n: impl std::fmt::Display) -> Cell {
        Cell::Number(n.to_string())
    }

    pub(crate) fn code(text: impl Into<String>) -> Cell {
        Cell::Code(text.into())
    }

    pub(crate) fn badge(badge: Badge, label: impl Into<String>) -> Cell {
        Cell::Badge(badge, label.into())
    }

    fn class(&self) -> &'static str {
        match self {
            Cell::Number(_) => " class=\"num\"",
            _ => "",
        }
    }

    fn html(&self) -> String {
        match self {
            Cell::Text(t) | Cell::Number(t) => escape(t),
            Cell::Code(t) => format!("<code>{}</code>", escape(t)),
            Cell::Badge(badge, label) => badge.html(label),
            Cell::Empty => String::new(),
        }
    }
}

/// A table: a header row and rows of cells (a short row is padded with empty cells).
#[derive(Clone, Debug, Default)]
pub(crate) struct Table {
    pub(crate) caption: Option<String>,
    pub(crate) columns: Vec<String>,
    pub(crate) rows: Vec<Vec<Cell>>,
}

impl Table {
    pub(crate) fn new(columns: &[&str]) -> Table {
        Table {
            caption: None,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<Cell>) -> &mut Table {
        self.rows.push(cells);
        self
    }
}

/// How chart values are labelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Unit {
    #[default]
    Count,
    /// Bytes, labelled in kB/MB (powers of 1000).
    Bytes,
    Seconds,
    /// A fraction, labelled as a percentage.
    Share,
}

impl Unit {
    pub(crate) fn label(self, value: f64) -> String {
        match self {
            Unit::Count => trim_number(value),
            Unit::Bytes => {
                let (v, suffix) = if value.abs() >= 1e9 {
                    (value / 1e9, " GB")
                } else if value.abs() >= 1e6 {
                    (value / 1e6, " MB")
                } else if value.abs() >= 1e3 {
                    (value / 1e3, " kB")
                } else {
                    (value, " B")
                };
                format!("{}{suffix}", trim_number(v))
            }
            Unit::Seconds => format!("{} s", trim_number(value)),
            Unit::Share => format!("{}%", trim_number(value * 100.0)),
        }
    }
}

/// A number with at most two decimals, without trailing zeros.
fn trim_number(value: f64) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

/// A horizontal line across a chart: the limit a value must stay under.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Limit {
    pub(crate) value: f64,
    pub(crate) label: String,
}

/// One named line of a time series: `(time, value)` points in any order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) points: Vec<(Timestamp, f64)>,
}

/// How a time series is drawn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Style {
    /// Points joined by a line: for values that exist between the points (a level, a rate).
    #[default]
    Line,
    /// A stem from zero to each point: for counts per interval, where an interval without a
    /// point had none (a line would invent values across the gap).
    Stems,
}

/// Values over time, with labelled axes (UTC time across, `unit` up) and an optional limit
/// line. A series with more points than the chart has columns is thinned to each column's
/// largest value, so peaks stay visible and the page stays small.
#[derive(Clone, Debug, Default)]
pub(crate) struct TimeSeries {
    pub(crate) title: String,
    pub(crate) y_label: String,
    pub(crate) unit: Unit,
    pub(crate) style: Style,
    pub(crate) series: Vec<Series>,
    pub(crate) limit: Option<Limit>,
    /// The time axis' span; `None` spans the points. Points outside it are not drawn (so charts
    /// of one period line up).
    pub(crate) range: Option<(Timestamp, Timestamp)>,
}

/// Labelled values as horizontal bars, with an optional limit line.
#[derive(Clone, Debug, Default)]
pub(crate) struct BarChart {
    pub(crate) title: String,
    pub(crate) x_label: String,
    pub(crate) unit: Unit,
    pub(crate) bars: Vec<(String, f64)>,
    pub(crate) limit: Option<Limit>,
}

/// The colours of the series, in order (the limit line has its own: [`LIMIT_COLOUR`]).
pub(crate) const SERIES_COLOURS: [&str; 4] = ["#1565c0", "#ef6c00", "#6a1b9a", "#00838f"];
/// The limit line's colour.
pub(crate) const LIMIT_COLOUR: &str = "#d50000";
/// The bars' colour.
pub(crate) const BAR_COLOUR: &str = "#00897b";

const STYLE: &str = "
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif;
  color: #1a1a1a; background: #fff; margin: 2em auto; max-width: 1100px; padding: 0 1.5em; }
h1 { font-size: 1.6em; margin: 0 0 .2em; }
h2 { font-size: 1.25em; margin: 1.6em 0 .5em; border-bottom: 1px solid #ccc; padding-bottom: .2em; }
h3 { font-size: 1.05em; margin: 1.2em 0 .4em; }
.generated { color: #555; margin: 0 0 1.5em; }
table { border-collapse: collapse; margin: .5em 0 1em; width: 100%; }
caption { text-align: left; font-weight: 600; padding: .3em 0; }
th, td { border: 1px solid #d0d0d0; padding: .3em .55em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: .25em 1.2em; margin: .5em 0 1em; }
dl.summary dt { font-weight: 600; color: #333; }
dl.summary dd { margin: 0; }
code { font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: .92em; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: .05em .55em; border-radius: .3em; font-weight: 700;
  letter-spacing: .04em; color: #fff; }
.badge.pass { background: #1b5e20; }
.badge.fail { background: #b71c1c; }
.badge.warn { background: #8d5a00; }
.badge.info { background: #455a64; }
figure.chart { margin: .5em 0 1.2em; }
figure.chart svg { max-width: 100%; height: auto; }
figure.chart figcaption { font-weight: 600; margin-bottom: .2em; }
.note { color: #444; }
@media print {
  body { margin: 0; max-width: none; font-size: 11pt; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  h2, h3 { break-after: avoid; }
  figure.chart, tr, dl.summary { break-inside: avoid; }
  thead { display: table-header-group; }
}
";

/// An HTML report being built, in reading order.
pub(crate) struct Page {
    title: String,
    generated: Timestamp,
    body: String,
}

impl Page {
    /// A page titled `title`, saying it was generated at `generated` (the caller's clock).
    pub(crate) fn new(title: &str, generated: Timestamp) -> Page {
        Page {
            title: title.to_string(),
            generated,
            body: String::new(),
        }
    }

    /// A section heading (`level` 2 or 3; the page's title is the only level 1).
    pub(crate) fn heading(&mut self, level: u8, text: &str) -> &mut Page {
        let level = level.clamp(2, 4);
        let _ = writeln!(self.body, "<h{level}>{}</h{level}>", escape(text));
        self
    }

    /// A heading followed by a badge (e.g. a token and its PASS/FAIL).
    pub(crate) fn heading_with_badge(
        &mut self,
        level: u8,
        text: &str,
        badge: Badge,
        label: &str,
    ) -> &mut Page {
        let level = level.clamp(2, 4);
        let _ = writeln!(
            self.body,
            "<h{level}>{} {}</h{level}>",
            badge.html(label),
            escape(text)
        );
        self
    }

    pub(crate) fn paragraph(&mut self, text: &str) -> &mut Page {
        let _ = writeln!(self.body, "<p>{}</p>", escape(text));
        self
    }

    /// A bulleted list, e.g. caveats.
    pub(crate) fn list(&mut self, items: &[String]) -> &mut Page {
        if items.is_empty() {
            return self;
        }
        self.body.push_str("<ul class=\"note\">\n");
        for item in items {
            let _ = writeln!(self.body, "<li>{}</li>", escape(item));
        }
        self.body.push_str("</ul>\n");
        self
    }

    /// Key-value pairs, e.g. a report's scope and totals.
    pub(crate) fn summary(&mut self, pairs: &[(&str, Cell)]) -> &mut Page {
        self.body.push_str("<dl class=\"summary\">\n");
        for (key, value) in pairs {
            let _ = writeln!(
                self.body,
                "<dt>{}</dt><dd>{}</dd>",
                escape(key),
                value.html()
            );
        }
        self.body.push_str("</dl>\n");
        self
    }

    pub(crate) fn table(&mut self, table: &Table) -> &mut Page {
        self.body.push_str("<table>\n");
        if let Some(caption) = &table.caption {
            let _ = writeln!(self.body, "<caption>{}</caption>", escape(caption));
        }
        self.body.push_str("<thead><tr>");
        for column in &table.columns {
            let _ = write!(self.body, "<th>{}</th>", escape(column));
        }
        self.body.push_str("</tr></thead>\n<tbody>\n");
        for row in &table.rows {
            self.body.push_str("<tr>");
            for i in 0..table.columns.len().max(row.len()) {
                let cell = row.get(i).unwrap_or(&Cell::Empty);
                let _ = write!(self.body, "<td{}>{}</td>", cell.class(), cell.html());
            }
            self.body.push_str("</tr>\n");
        }
        self.body.push_str("</tbody></table>\n");
        self
    }

    pub(crate) fn time_series(&mut self, chart: &TimeSeries) -> &mut Page {
        let svg = time_series_svg(chart);
        self.figure(&chart.title, &svg)
    }

    pub(crate) fn bar_chart(&mut self, chart: &BarChart) -> &mut Page {
        let svg = bar_chart_svg(chart);
        self.figure(&chart.title, &svg)
    }

    fn figure(&mut self, title: &str, svg: &str) -> &mut Page {
        let _ = writeln!(
            self.body,
            "<figure class=\"chart\"><figcaption>{}</figcaption>\n{svg}</figure>",
            escape(title)
        );
        self
    }

    /// The whole document.
    pub(crate) fn finish(self) -> String {
        let title = escape(&self.title);
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
             style-src 'unsafe-inline'; img-src data:\">\n\
             <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
             <h1>{title}</h1>\n<p class=\"generated\">Generated {}</p>\n{}</body>\n</html>\n",
            escape(&rfc3339(self.generated)),
            self.body
        )
    }
}

/// Chart geometry, in SVG user units.
const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 40.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 50.0;

/// Up to about `n` round tick values from 0 to at least `max`.
fn ticks(max: f64, n: usize) -> Vec<f64> {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / n.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude);
    let count = (max / step).ceil() as usize;
    (0..=count).map(|i| i as f64 * step).collect()
}

/// The value axis for `values` and the limit (with headroom above it): its ticks and its top.
fn scale(values: impl Iterator<Item = f64>, limit: Option<&Limit>) -> (Vec<f64>, f64) {
    let max_value = values
        .chain(limit.map(|l| l.value * 1.1))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let ticks = ticks(max_value, 5);
    let top = ticks.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
    (ticks, top)
}

fn finite(points: &[(Timestamp, f64)]) -> impl Iterator<Item = (Timestamp, f64)> + '_ {
    points.iter().copied().filter(|(_, v)| v.is_finite())
}

/// The largest value of each of at most `columns` equal slices of `[t0, t1]`.
fn thin(points: &[(Timestamp, f64)], t0: u64, t1: u64, columns: usize) -> Vec<(u64, f64)> {
    let mut sorted: Vec<(u64, f64)> = finite(points).map(|(t, v)| (t.0, v)).collect();
    sorted.sort_by_key(|p| p.0);
    if sorted.len() <= columns {
        return sorted;
    }
    let span = (t1 - t0).max(1) as f64;
    let mut out: Vec<(u64, f64)> = Vec::with_capacity(columns);
    let mut last_column = usize::MAX;
    for (t, v) in sorted {
        let column = (((t - t0) as f64 / span) * (columns - 1) as f64) as usize;
        match out.last_mut() {
            Some(last) if column == last_column => {
                if v > last.1 {
                    *last = (t, v);
                }
            }
            _ => {
                out.push((t, v));
                last_column = column;
            }
        }
    }
    out
}

/// Round times (in nanoseconds) from `t0` to `t1`, at most about six: every 10 s, 5 min, 6 h, …
fn time_ticks(t0: u64, t1: u64) -> (Vec<u64>, u64) {
    const STEPS_S: [u64; 19] = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200,
        86_400, 604_800,
    ];
    let span_s = (t1 - t0) / 1_000_000_000;
    let step_s = STEPS_S
        .iter()
        .copied()
        .find(|step| span_s / step <= 6)
        .unwrap_or_else(|| (span_s / 6).div_ceil(86_400) * 86_400);
    let step = step_s * 1_000_000_000;
    let first = t0.div_ceil(step) * step;
    let ticks = (0..)
        .map(|i| first + i * step)
        .take_while(|t| *t <= t1)
        .collect();
    (ticks, step_s)
}

/// A tick's time: `HH:MM:SS` for steps under a minute, `HH:MM`, with the date (`MM-DD`) when
/// the chart spans days.
fn time_label(at: u64, step_s: u64, span_s: u64) -> String {
    let text = rfc3339(Timestamp(at));
    // 2026-01-05T08:00:00Z
    if step_s >= 86_400 {
        text[5..10].to_string()
    } else if span_s > 86_400 {
        text[5..16].replace('T', " ")
    } else if step_s < 60 {
        text[11..19].to_string()
    } else {
        text[11..16].to_string()
    }
}

/// An `<svg>` element `height` tall on a white ground, titled for screen readers.
fn svg_open(out: &mut String, title: &str, height: f64) {
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {height}\" \
         width=\"{WIDTH}\" height=\"{height}\" role=\"img\" aria-label=\"{}\" \
         font-family=\"sans-serif\" font-size=\"12\">",
        escape(title)
    );
    let _ = writeln!(
        out,
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"#ffffff\"/>"
    );
}

/// A horizontal limit line at `y` with its label.
fn limit_line(out: &mut String, y: f64, label: &str) {
    let _ = writeln!(
        out,
        "<line class=\"limit\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" \
         stroke=\"{LIMIT_COLOUR}\" stroke-width=\"2\" stroke-dasharray=\"8 4\"/>",
        WIDTH - RIGHT
    );
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{LIMIT_COLOUR}\">{}</text>",
        WIDTH - RIGHT - 4.0,
        y - 5.0,
        escape(label)
    );
}

/// The SVG of a time series (its own element, for reuse and tests).
pub(crate) fn time_series_svg(chart: &TimeSeries) -> String {
    let mut out = String::new();
    svg_open(&mut out, &chart.title, HEIGHT);
    let in_range = |t: Timestamp| chart.range.is_none_or(|(from, to)| t >= from && t <= to);
    let all: Vec<(Timestamp, f64)> = chart
        .series
        .iter()
        .flat_map(|s| finite(&s.points))
        .filter(|p| in_range(p.0))
        .collect();
    let bounds = match chart.range {
        Some((from, to)) => Some((from.0, to.0)),
        None => all
            .iter()
            .map(|p| p.0.0)
            .min()
            .zip(all.iter().map(|p| p.0.0).max()),
    };
    let (t0, t1) = match bounds {
        Some((a, b)) if !all.is_empty() && b > a => (a, b),
        // One instant: a minute around it.
        Some((a, _)) if !all.is_empty() => (a.saturating_sub(30_000_000_000), a + 30_000_000_000),
        _ => {
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">no data</text></svg>",
                WIDTH / 2.0,
                HEIGHT / 2.0
            );
            return out;
        }
    };
    let (y_ticks, y_max) = scale(all.iter().map(|p| p.1), chart.limit.as_ref());
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: u64| LEFT + t.saturating_sub(t0) as f64 / (t1 - t0) as f64 * plot_w;
    let y = |v: f64| TOP + plot_h - (v.max(0.0) / y_max) * plot_h;

    // Grid and y axis.
    for v in &y_ticks {
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#e0e0e0\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#333\">{}</text>",
            WIDTH - RIGHT,
            y(*v),
            y(*v),
            LEFT - 6.0,
            y(*v) + 4.0,
            escape(&chart.unit.label(*v))
        );
    }
    // X axis: round times.
    let span_s = (t1 - t0) / 1_000_000_000;
    let (x_ticks, step_s) = time_ticks(t0, t1);
    for t in x_ticks {
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"#333\"/>\
             <text x=\"{0:.1}\" y=\"{3:.1}\" text-anchor=\"middle\" fill=\"#333\">{4}</text>",
            x(t),
            TOP + plot_h,
            TOP + plot_h + 5.0,
            TOP + plot_h + 18.0,
            escape(&time_label(t, step_s, span_s))
        );
    }
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{0:.1}\" stroke=\"#333\"/>\
         <line x1=\"{LEFT}\" x2=\"{1:.1}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#333\"/>",
        TOP + plot_h,
        WIDTH - RIGHT
    );
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#333\">time (UTC)</text>",
        LEFT + plot_w / 2.0,
        HEIGHT - 8.0
    );
    let _ = writeln!(
        out,
        "<text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\" \
         fill=\"#333\">{}</text>",
        TOP + plot_h / 2.0,
        escape(&chart.y_label)
    );
    if let Some(limit) = &chart.limit
        && limit.value.is_finite()
    {
        limit_line(&mut out, y(limit.value), &limit.label);
    }
    let columns = (plot_w / 2.0) as usize;
    for (i, series) in chart.series.iter().enumerate() {
        let colour = SERIES_COLOURS[i % SERIES_COLOURS.len()];
        let shown: Vec<(Timestamp, f64)> = series
            .points
            .iter()
            .copied()
            .filter(|p| in_range(p.0))
            .collect();
        let points = thin(&shown, t0, t1, columns);
        let _ = write!(
            out,
            "<g class=\"series\"><title>{}</title>",
            escape(&series.name)
        );
        match chart.style {
            Style::Line => {
                let path: Vec<String> = points
                    .iter()
                    .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                    .collect();
                let _ = writeln!(
                    out,
                    "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" \
                     points=\"{}\"/>",
                    path.join(" ")
                );
            }
            Style::Stems => {
                for (t, v) in &points {
                    let _ = write!(
                        out,
                        "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" \
                         stroke=\"{colour}\" stroke-width=\"3\"/>",
                        x(*t),
                        y(0.0),
                        y(*v)
                    );
                }
            }
        }
        for (t, v) in &points {
            let _ = write!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{colour}\"/>",
                x(*t),
                y(*v)
            );
        }
        out.push_str("</g>\n");
    }
    if chart.series.len() > 1 {
        for (i, series) in chart.series.iter().enumerate() {
            let colour = SERIES_COLOURS[i % SERIES_COLOURS.len()];
            let ly = TOP + 4.0 + 16.0 * i as f64;
            let _ = writeln!(
                out,
                "<rect x=\"{:.1}\" y=\"{ly:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#333\">{}</text>",
                LEFT + 10.0,
                LEFT + 25.0,
                ly + 9.0,
                escape(&series.name)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

/// The SVG of a bar chart (its own element, for reuse and tests).
pub(crate) fn bar_chart_svg(chart: &BarChart) -> String {
    let bars: Vec<(&str, f64)> = chart
        .bars
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(l, v)| (l.as_str(), v.max(0.0)))
        .collect();
    let bar_h = 22.0;
    let height = TOP + BOTTOM + bar_h * bars.len().max(1) as f64;
    let left = 200.0;
    let plot_w = WIDTH - left - RIGHT - 40.0;
    let mut out = String::new();
    svg_open(&mut out, &chart.title, height);
    let (x_ticks, x_max) = scale(bars.iter().map(|b| b.1), chart.limit.as_ref());
    let x = |v: f64| left + v / x_max * plot_w;
    let bottom = height - BOTTOM;
    for v in &x_ticks {
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{TOP}\" y2=\"{1:.1}\" stroke=\"#e0e0e0\"/>\
             <text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\" fill=\"#333\">{3}</text>",
            x(*v),
            bottom,
            bottom + 16.0,
            escape(&chart.unit.label(*v))
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#333\">{}</text>",
        left + plot_w / 2.0,
        height - 8.0,
        escape(&chart.x_label)
    );
    for (i, (label, value)) in bars.iter().enumerate() {
        let top = TOP + bar_h * i as f64;
        let _ = writeln!(
            out,
            "<g class=\"bar\"><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#333\">{}</text>\
             <rect x=\"{left}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{BAR_COLOUR}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#333\">{}</text></g>",
            left - 6.0,
            top + 15.0,
            escape(label),
            top + 3.0,
            x(*value) - left,
            bar_h - 6.0,
            x(*value) + 4.0,
            top + 15.0,
            escape(&chart.unit.label(*value))
        );
    }
    let _ = writeln!(
        out,
        "<line x1=\"{left}\" x2=\"{left}\" y1=\"{TOP}\" y2=\"{bottom:.1}\" stroke=\"#333\"/>"
    );
    if let Some(limit) = &chart.limit
        && limit.value.is_finite()
    {
        let lx = x(limit.value);
        let _ = writeln!(
            out,
            "<line class=\"limit\" x1=\"{lx:.1}\" x2=\"{lx:.1}\" y1=\"{:.1}\" y2=\"{bottom:.1}\" \
             stroke=\"{LIMIT_COLOUR}\" stroke-width=\"2\" stroke-dasharray=\"8 4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{LIMIT_COLOUR}\">{}</text>",
            TOP - 6.0,
            lx + 4.0,
            TOP - 8.0 + 12.0,
            escape(&limit.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests;
