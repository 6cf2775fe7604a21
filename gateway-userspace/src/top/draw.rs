//! The screen. Built for 80×24 (ssh from anywhere): a header, two summary lines, the routes
//! table, three small panes (consumers, XDP offenders, health) when there are at least 20
//! lines, and a key line. Wider terminals give the route names the room.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::Stylize,
    text::{Line, Span},
    widgets::{Block, Cell, Paragraph, Row, Table},
};

use super::{
    Offenders, Screen,
    stats::{Figures, RouteRow},
    view::{SortBy, ViewState},
};

/// Fewer lines than this: the panes are left out, the routes keep the room.
const PANES_FROM_HEIGHT: u16 = 20;
const PANE_HEIGHT: u16 = 7;

pub fn draw(frame: &mut Frame, screen: &Screen, view: &ViewState) {
    let area = frame.area();
    let panes = if area.height >= PANES_FROM_HEIGHT { PANE_HEIGHT } else { 0 };
    let [header, summary, routes, bottom, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(panes),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header_line(screen, view)), header);
    frame.render_widget(Paragraph::new(summary_lines(&screen.figures)), summary);
    draw_routes(frame, routes, &screen.figures, view);
    if panes > 0 {
        draw_panes(frame, bottom, screen);
    }
    frame.render_widget(Paragraph::new(key_line(screen, view)), keys);
}

fn header_line(screen: &Screen, view: &ViewState) -> Line<'static> {
    let mut spans = vec![Span::from("gatewayd top").bold()];
    if let Some(s) = &screen.status {
        let ready = if s["ready"].as_bool() == Some(true) { "ready" } else { "NOT READY" };
        spans.push(Span::from(format!(
            "  v{}  gen {}  {ready}  {} workers",
            s["version"].as_str().unwrap_or("?"),
            s["generation"],
            s["workers"]
        )));
    }
    spans.push(Span::from(format!("  every {}", humantime::format_duration(screen.interval))));
    if view.paused {
        spans.push(Span::from(format!("  PAUSED ({} held)", view.held)).reversed());
    }
    Line::from(spans)
}

fn summary_lines(f: &Figures) -> Vec<Line<'static>> {
    let failures = if f.tls_failures.is_empty() {
        "none".to_owned()
    } else {
        f.tls_failures.iter().map(|(r, n)| format!("{r} {n}")).collect::<Vec<_>>().join(", ")
    };
    vec![
        Line::from(format!(
            "req/s {}  5xx {}  429/s {}  conns {}  XDP drops/s {}",
            rate(f.rate),
            percent(f.error_ratio),
            rate(f.limited_rate),
            f.connections,
            rate(f.xdp_drop_rate),
        )),
        Line::from(format!("TLS handshakes/s {}  failed: {failures}", rate(f.tls_handshake_rate))),
    ]
}

fn draw_routes(frame: &mut Frame, area: Rect, f: &Figures, view: &ViewState) {
    let columns = [
        ("ROUTE", SortBy::Route),
        ("REQS", SortBy::Requests),
        ("REQ/S", SortBy::Rate),
        ("5XX", SortBy::Errors),
        ("429/S", SortBy::Rate),
        ("P50", SortBy::P99),
        ("P99", SortBy::P99),
        ("OVH P99", SortBy::Overhead),
    ];
    let header = Row::new(columns.iter().enumerate().map(|(i, (name, by))| {
        // The sorted column is marked once (429/S and P50 share a key with others).
        let marked = *by == view.sort && !matches!(i, 4 | 5);
        let cell = if i == 0 { Line::from(*name) } else { Line::from(*name).right_aligned() };
        if marked { Cell::from(cell.reversed()) } else { Cell::from(cell) }
    }))
    .bold();
    let rows = view.rows(&f.routes).into_iter().map(route_row);
    let widths = [
        Constraint::Min(12),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
    ];
    let title = format!(" routes ({}) ", f.routes.len());
    frame.render_widget(Table::new(rows, widths).header(header).block(Block::bordered().title(title)), area);
}

fn route_row(r: &RouteRow) -> Row<'static> {
    let right = |s: String| Cell::from(Line::from(s).right_aligned());
    Row::new([
        Cell::from(r.route.clone()),
        right(format!("{}", r.requests)),
        right(rate(r.rate)),
        right(percent(r.error_ratio)),
        right(rate(r.limited_rate)),
        right(seconds(r.p50)),
        right(seconds(r.p99)),
        right(seconds(r.overhead_p99)),
    ])
}

fn draw_panes(frame: &mut Frame, area: Rect, screen: &Screen) {
    let [consumers, offenders, health] = Layout::horizontal([Constraint::Fill(1); 3]).areas(area);
    let lines = PANE_HEIGHT as usize - 2;
    let f = &screen.figures;
    let consumer_lines: Vec<Line> = if f.consumers.is_empty() {
        vec![Line::from("(no consumer label)").italic()]
    } else {
        f.consumers.iter().take(lines).map(|(c, r)| Line::from(format!("{c} {}/s", rate(Some(*r))))).collect()
    };
    frame.render_widget(Paragraph::new(consumer_lines).block(Block::bordered().title(" consumers ")), consumers);
    let offender_lines: Vec<Line> = match &screen.offenders {
        Offenders::Off => vec![Line::from("XDP guard off").italic()],
        Offenders::Error(e) => vec![Line::from(e.clone())],
        Offenders::List(list) if list.is_empty() => vec![Line::from("no drops")],
        Offenders::List(list) => list.iter().take(lines).map(|(src, n)| Line::from(format!("{src} {n}"))).collect(),
    };
    frame.render_widget(Paragraph::new(offender_lines).block(Block::bordered().title(" XDP offenders ")), offenders);
    frame.render_widget(Paragraph::new(health_lines(f)).block(Block::bordered().title(" health ")), health);
}

fn health_lines(f: &Figures) -> Vec<Line<'static>> {
    let redis = match f.redis.iter().filter(|(_, up)| !up).count() {
        _ if f.redis.is_empty() => "Redis -".to_owned(),
        0 => format!("Redis up ({})", f.redis.len()),
        down => format!("Redis DOWN {down}/{}", f.redis.len()),
    };
    let idp = match f.idps.iter().find(|(_, state)| *state != "ok") {
        _ if f.idps.is_empty() => "IdP -".to_owned(),
        None => format!("IdP ok ({})", f.idps.len()),
        Some((issuer, state)) => format!("IdP {issuer} {state}"),
    };
    let warn = |s: String, bad: bool| if bad { Line::from(s).reversed() } else { Line::from(s) };
    vec![
        Line::from(format!("CPU {} (softirq {})", percent(f.cpu_busy), percent(f.cpu_softirq))),
        Line::from(match f.temperature {
            Some(t) => format!("temp {t:.0}°C"),
            None => "temp n/a".to_owned(),
        }),
        warn(redis, f.redis.iter().any(|(_, up)| !up)),
        warn(idp, f.idps.iter().any(|(_, s)| *s != "ok")),
    ]
}

fn key_line(screen: &Screen, view: &ViewState) -> Line<'static> {
    if view.editing {
        return Line::from(format!("filter: {}_  (Enter keeps, Esc clears)", view.filter)).reversed();
    }
    let mut s = format!("s sort: {}  / filter", view.sort.label());
    if !view.filter.is_empty() {
        s.push_str(&format!(": {}", view.filter));
    }
    s.push_str("  p pause  q quit");
    let mut spans = vec![Span::from(s)];
    if let Some(e) = &screen.error {
        spans.push(Span::from(format!("  {e}")).reversed());
    }
    Line::from(spans)
}

fn rate(r: Option<f64>) -> String {
    match r {
        None => "-".to_owned(),
        Some(r) if r >= 100.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
    }
}

fn percent(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

fn seconds(s: Option<f64>) -> String {
    match s {
        None => "-".to_owned(),
        Some(s) if s < 0.001 => format!("{:.0}µs", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}
