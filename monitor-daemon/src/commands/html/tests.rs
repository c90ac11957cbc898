use super::*;

const HOSTILE: &str = "<script>alert('x')</script>&\"<img src=x onerror=alert(1)>";

fn at(secs: u64) -> Timestamp {
    Timestamp(secs * 1_000_000_000)
}

/// Every number in an attribute of the elements named `element`, e.g. all `cy` of circles.
fn attrs(svg: &str, element: &str, attr: &str) -> Vec<f64> {
    svg.split(&format!("<{element} "))
        .skip(1)
        .filter_map(|rest| {
            let tag = format!(" {}", &rest[..rest.find('>')?]);
            let start = tag.find(&format!(" {attr}=\""))? + attr.len() + 3;
            let end = start + tag[start..].find('"')?;
            tag[start..end].parse().ok()
        })
        .collect()
}

#[test]
fn escape_turns_markup_into_text() {
    assert_eq!(
        escape("<b a=\"1\" b='2'>&</b>"),
        "&lt;b a=&quot;1&quot; b=&#39;2&#39;&gt;&amp;&lt;/b&gt;"
    );
    assert_eq!(escape("a\u{0}b\u{1b}c\nd"), "a\u{fffd}b\u{fffd}c\nd");
    assert_eq!(escape("plain ünïcode"), "plain ünïcode");
}

#[test]
fn hostile_values_stay_text_everywhere_on_the_page() {
    let mut page = Page::new(HOSTILE, at(1_767_600_000));
    let mut table = Table::new(&[HOSTILE, "n"]);
    table.caption = Some(HOSTILE.into());
    table.row(vec![
        Cell::text(HOSTILE),
        Cell::number(HOSTILE),
        Cell::code(HOSTILE),
        Cell::badge(Badge::Fail, HOSTILE),
    ]);
    page.heading(2, HOSTILE)
        .heading_with_badge(3, HOSTILE, Badge::Pass, HOSTILE)
        .paragraph(HOSTILE)
        .list(&[HOSTILE.to_string()])
        .summary(&[(HOSTILE, Cell::text(HOSTILE))])
        .table(&table)
        .time_series(&TimeSeries {
            title: HOSTILE.into(),
            y_label: HOSTILE.into(),
            unit: Unit::Count,
            series: vec![
                Series {
                    name: HOSTILE.into(),
                    points: vec![(at(0), 1.0), (at(60), 2.0)],
                },
                Series {
                    name: HOSTILE.into(),
                    points: vec![(at(0), 3.0)],
                },
            ],
            limit: Some(Limit {
                value: 3.0,
                label: HOSTILE.into(),
            }),
            ..TimeSeries::default()
        })
        .bar_chart(&BarChart {
            title: HOSTILE.into(),
            x_label: HOSTILE.into(),
            unit: Unit::Bytes,
            bars: vec![(HOSTILE.into(), 5.0)],
            limit: Some(Limit {
                value: 4.0,
                label: HOSTILE.into(),
            }),
        });
    let html = page.finish();
    let lower = html.to_lowercase();
    assert!(!lower.contains("<script"), "{html}");
    assert!(!lower.contains("<img"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"));
    // Every occurrence was escaped: 18 places above take the hostile text.
    assert!(html.matches("&lt;script&gt;").count() >= 18, "{html}");
}

#[test]
fn the_page_is_self_contained() {
    let mut page = Page::new("Report", at(1_767_600_000));
    page.time_series(&TimeSeries {
        title: "calls".into(),
        series: vec![Series {
            name: "a".into(),
            points: vec![(at(1_767_600_000), 1.0)],
        }],
        ..TimeSeries::default()
    })
    .bar_chart(&BarChart {
        title: "bars".into(),
        bars: vec![("a".into(), 1.0)],
        ..BarChart::default()
    });
    let html = page.finish();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<title>Report</title>"));
    assert!(html.contains("Generated 2026-01-05T08:00:00Z"));
    for fetches in ["src=", "href=", "url(", "@import", "<script", "<link"] {
        assert!(!html.contains(fetches), "{fetches} in {html}");
    }
    // The only URL is the SVG namespace, which names and never fetches.
    let urls = html.matches("http://").count() + html.matches("https://").count();
    assert_eq!(
        urls,
        html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
    );
    assert!(html.contains("@media print"));
}

#[test]
fn a_time_series_draws_its_points_axes_and_limit_line_to_scale() {
    let chart = TimeSeries {
        title: "Calls per minute".into(),
        y_label: "calls".into(),
        unit: Unit::Count,
        series: vec![Series {
            name: "calls".into(),
            points: vec![
                (at(1_767_600_000), 2.0),
                (at(1_767_600_060), 5.0),
                (at(1_767_600_120), 0.0),
            ],
        }],
        limit: Some(Limit {
            value: 3.0,
            label: "limit 3".into(),
        }),
        ..TimeSeries::default()
    };
    let svg = time_series_svg(&chart);
    // Ticks 0..5 step 1 (5 is the highest value, above the limit's headroom of 3.3).
    let bottom = HEIGHT - BOTTOM;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let cy = attrs(&svg, "circle", "cy");
    let cx = attrs(&svg, "circle", "cx");
    assert_eq!(cy.len(), 3);
    let y_max = 5.0;
    for (got, v) in cy.iter().zip([2.0, 5.0, 0.0]) {
        let want = bottom - v / y_max * plot_h;
        assert!((got - want).abs() < 0.11, "{got} vs {want}\n{svg}");
    }
    assert_eq!(
        cx,
        [LEFT, LEFT + (WIDTH - LEFT - RIGHT) / 2.0, WIDTH - RIGHT]
    );
    // The limit line, dashed, at 3.
    let limit = svg
        .split("<line class=\"limit\"")
        .nth(1)
        .expect("limit line");
    assert!(limit.contains(LIMIT_COLOUR));
    let want = bottom - 3.0 / y_max * plot_h;
    assert!(limit.contains(&format!("y1=\"{want:.1}\"")), "{limit}");
    assert!(svg.contains(">limit 3</text>"));
    // Labelled axes: times of day and values.
    // Two minutes: a tick every 30 s.
    for tick in ["08:00:00", "08:00:30", "08:01:00", "08:01:30", "08:02:00"] {
        assert!(svg.contains(&format!(">{tick}</text>")), "{tick} in {svg}");
    }
    assert!(svg.contains(">time (UTC)</text>"));
    assert!(svg.contains(">calls</text>"));
    for tick in ["0", "1", "2", "3", "4", "5"] {
        assert!(svg.contains(&format!(">{tick}</text>")), "tick {tick}");
    }
    assert!(svg.contains(SERIES_COLOURS[0]));
}

#[test]
fn a_long_series_is_thinned_to_column_peaks() {
    let points: Vec<(Timestamp, f64)> = (0..100_000u64)
        .map(|i| (at(i), if i == 50_000 { 1000.0 } else { (i % 7) as f64 }))
        .collect();
    let svg = time_series_svg(&TimeSeries {
        title: "t".into(),
        series: vec![Series {
            name: "s".into(),
            points,
        }],
        ..TimeSeries::default()
    });
    let circles = attrs(&svg, "circle", "cy");
    assert!(circles.len() <= 420, "{}", circles.len());
    assert!(circles.len() > 300);
    // The one peak survives the thinning, at the top of the plot.
    let top = circles.iter().copied().fold(f64::MAX, f64::min);
    assert!((top - TOP).abs() < 0.11, "{top}");
    assert!(svg.len() < 60_000, "{}", svg.len());
}

#[test]
fn an_empty_or_odd_series_still_draws() {
    let empty = time_series_svg(&TimeSeries::default());
    assert!(empty.contains("no data") && empty.trim_end().ends_with("</svg>"));
    let odd = time_series_svg(&TimeSeries {
        series: vec![Series {
            name: "s".into(),
            points: vec![(at(10), f64::NAN), (at(10), f64::INFINITY), (at(10), 1.0)],
        }],
        ..TimeSeries::default()
    });
    assert!(!odd.contains("NaN") && !odd.contains("inf"), "{odd}");
    assert_eq!(attrs(&odd, "circle", "cy").len(), 1);
}

#[test]
fn a_bar_chart_draws_bars_to_scale_with_a_limit_line() {
    let svg = bar_chart_svg(&BarChart {
        title: "Largest response".into(),
        x_label: "bytes".into(),
        unit: Unit::Bytes,
        bars: vec![("small".into(), 100_000.0), ("big".into(), 800_000.0)],
        limit: Some(Limit {
            value: 500_000.0,
            label: "heavy above 500 kB".into(),
        }),
    });
    let widths: Vec<f64> = attrs(&svg, "rect", "width").into_iter().skip(1).collect();
    assert_eq!(widths.len(), 2, "{svg}");
    assert!((widths[1] / widths[0] - 8.0).abs() < 0.01, "{widths:?}");
    assert!(svg.contains(BAR_COLOUR));
    assert!(svg.contains(">heavy above 500 kB</text>"));
    assert!(svg.contains(">800 kB</text>"), "{svg}");
    assert!(svg.contains(">small</text>") && svg.contains(">big</text>"));
    let limit_x = attrs(&svg, "line class=\"limit\"", "x1");
    let x0 = attrs(&svg, "rect", "x")[1];
    // The limit is five times the small bar.
    assert!(
        (limit_x[0] - x0 - widths[0] * 5.0).abs() < 0.2,
        "{limit_x:?} {x0} {widths:?}"
    );
}

#[test]
fn units_label_values_for_people() {
    assert_eq!(Unit::Bytes.label(500_000.0), "500 kB");
    assert_eq!(Unit::Bytes.label(2_500_000.0), "2.5 MB");
    assert_eq!(Unit::Count.label(3.0), "3");
    assert_eq!(Unit::Seconds.label(0.25), "0.25 s");
    assert_eq!(Unit::Share.label(0.92), "92%");
    assert_eq!(ticks(5.0, 5), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(ticks(0.0, 5).len(), 6);
    assert_eq!(ticks(0.0, 5).last(), Some(&1.0));
    assert_eq!(ticks(800_000.0, 5).last(), Some(&800_000.0));
    assert_eq!(ticks(801_000.0, 5).last(), Some(&1_000_000.0));
}

#[test]
fn stems_stand_on_zero_and_a_range_fixes_the_time_axis() {
    let chart = TimeSeries {
        title: "calls".into(),
        style: Style::Stems,
        series: vec![Series {
            name: "calls".into(),
            // The last point is outside the range: not drawn.
            points: vec![(at(1_000), 4.0), (at(1_060), 2.0), (at(5_000), 9.0)],
        }],
        range: Some((at(940), at(1_240))),
        ..TimeSeries::default()
    };
    let svg = time_series_svg(&chart);
    assert!(!svg.contains("<polyline"), "{svg}");
    let cx = attrs(&svg, "circle", "cx");
    let plot_w = WIDTH - LEFT - RIGHT;
    assert_eq!(cx, [LEFT + plot_w * 0.2, LEFT + plot_w * 0.4]);
    // Stems from the x axis (y of 0) up to each point; the axis tops out at 4.
    let bottom = HEIGHT - BOTTOM;
    let plot_h = HEIGHT - TOP - BOTTOM;
    for top in [TOP, bottom - plot_h / 2.0] {
        let stem = format!(
            "y1=\"{bottom:.1}\" y2=\"{top:.1}\" stroke=\"{}\" stroke-width=\"3\"",
            SERIES_COLOURS[0]
        );
        assert!(svg.contains(&stem), "{stem} not in {svg}");
    }
    let tops = attrs(&svg, "circle", "cy");
    assert_eq!(tops[0], TOP);
    assert!(
        !svg.contains(">9</text>") && !svg.contains(">8</text>"),
        "{svg}"
    );

    // Nothing inside the range: said, not drawn.
    let empty = time_series_svg(&TimeSeries {
        range: Some((at(0), at(10))),
        ..chart
    });
    assert!(empty.contains("no data") && !empty.contains("<circle"));
}

#[test]
fn time_ticks_are_round_and_labelled_for_their_span() {
    let t = |secs: u64| secs * 1_000_000_000;
    let base = 1_767_600_000; // 2026-01-05T08:00:00Z
    let (ticks, step) = time_ticks(t(base + 7), t(base + 3_000));
    assert_eq!(step, 600);
    assert_eq!(
        ticks,
        [
            t(base + 600),
            t(base + 1200),
            t(base + 1800),
            t(base + 2400),
            t(base + 3000)
        ]
    );
    assert_eq!(time_label(ticks[0], step, 3_000), "08:10");
    let (ticks, step) = time_ticks(t(base), t(base + 30 * 86_400));
    assert_eq!(step, 604_800);
    assert!(ticks.len() <= 6);
    assert_eq!(time_label(t(base), step, 30 * 86_400), "01-05");
    let (_, step) = time_ticks(t(base), t(base + 3 * 86_400));
    assert_eq!(step, 43_200);
    assert_eq!(time_label(t(base), step, 3 * 86_400), "01-05 08:00");
    let (ticks, step) = time_ticks(t(base), t(base + 3 * 365 * 86_400));
    assert!(
        ticks.len() <= 7 && step % 86_400 == 0,
        "{} {step}",
        ticks.len()
    );
}
