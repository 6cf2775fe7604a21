//! `gatewayd top`: a live terminal view of the running daemon, read through its admin socket
//! (`GET /metrics`, `/v1/status`, `/v1/xdp/top`) once per interval. Rates and latency
//! quantiles are computed from the difference between two scrapes (`stats`), so what is shown
//! is the last interval.

mod draw;
pub mod scrape;
pub mod stats;
pub mod view;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use http::{Method, StatusCode};
use ratatui::crossterm::event::{self, Event};
use thiserror::Error;

use crate::admin::{AdminClient, AdminError};
use scrape::Scrape;
use stats::{Figures, Window};
use view::{KeyOutcome, ViewState};

/// Offenders listed in the XDP pane.
const OFFENDERS: usize = 5;
/// The offenders are read this often, not every interval: the endpoint walks the guard's
/// whole source table (one lookup per tracked source).
const OFFENDERS_EVERY: Duration = Duration::from_secs(5);
/// One fetch (three admin calls) may take this long before the screen says so.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum TopError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Metrics(#[from] scrape::ParseError),
    #[error("no answer from the admin socket within {0:?}")]
    Timeout(Duration),
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

pub struct TopOptions {
    pub socket: PathBuf,
    pub interval: Duration,
}

/// What one fetch brought, and what the screen shows.
pub struct Screen {
    pub figures: Figures,
    pub status: Option<serde_json::Value>,
    pub offenders: Offenders,
    /// The last fetch failed (the daemon restarting, say): the figures are older.
    pub error: Option<String>,
    pub interval: Duration,
}

pub enum Offenders {
    Off,
    /// Source and packets dropped, most first.
    List(Vec<(String, u64)>),
    Error(String),
}

struct Fetched {
    scrape: Scrape,
    at: Instant,
    status: serde_json::Value,
    /// Read when due (`OFFENDERS_EVERY`).
    offenders: Option<Offenders>,
}

/// Runs until `q`. Fails before taking over the terminal when the daemon does not answer.
pub fn run(options: &TopOptions) -> Result<(), TopError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = AdminClient::new(&options.socket);
    let first = rt.block_on(fetch(&client, true))?;
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, &rt, &client, options.interval, first);
    ratatui::try_restore()?;
    result
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    rt: &tokio::runtime::Runtime,
    client: &AdminClient,
    interval: Duration,
    first: Fetched,
) -> Result<(), TopError> {
    let mut view = ViewState::default();
    let mut screen = Screen {
        figures: Window { prev: None, cur: &first.scrape, secs: 1.0 }.figures(),
        status: Some(first.status.clone()),
        offenders: first.offenders.unwrap_or(Offenders::Off),
        error: None,
        interval,
    };
    let mut last = (first.scrape, first.at);
    // Computed while paused, shown on resume.
    let mut latest: Option<(Figures, serde_json::Value)> = None;
    let mut latest_offenders: Option<Offenders> = None;
    let mut next = Instant::now() + interval;
    let mut offenders_read = Instant::now();
    loop {
        terminal.draw(|frame| draw::draw(frame, &screen, &view))?;
        if event::poll(next.saturating_duration_since(Instant::now()))? {
            if let Event::Key(key) = event::read()? {
                match view.on_key(key) {
                    KeyOutcome::Quit => return Ok(()),
                    KeyOutcome::Resume => {
                        if let Some((figures, status)) = latest.take() {
                            (screen.figures, screen.status) = (figures, Some(status));
                        }
                        if let Some(offenders) = latest_offenders.take() {
                            screen.offenders = offenders;
                        }
                    }
                    KeyOutcome::Continue => {}
                }
            }
            continue;
        }
        next = Instant::now() + interval;
        let offenders_due = offenders_read.elapsed() >= OFFENDERS_EVERY;
        if offenders_due {
            offenders_read = Instant::now();
        }
        match rt.block_on(fetch(client, offenders_due)) {
            Ok(now) => {
                let secs = now.at.duration_since(last.1).as_secs_f64();
                let figures = Window { prev: Some(&last.0), cur: &now.scrape, secs }.figures();
                screen.error = None;
                if view.paused {
                    view.held += 1;
                    latest = Some((figures, now.status));
                    latest_offenders = now.offenders.or(latest_offenders);
                } else {
                    (screen.figures, screen.status) = (figures, Some(now.status));
                    if let Some(offenders) = now.offenders {
                        screen.offenders = offenders;
                    }
                }
                last = (now.scrape, now.at);
            }
            Err(e) => screen.error = Some(e.to_string()),
        }
    }
}

async fn fetch(client: &AdminClient, with_offenders: bool) -> Result<Fetched, TopError> {
    let calls = async {
        let text = client.call_text(Method::GET, "/metrics", None).await?;
        let at = Instant::now();
        let status = client.call(Method::GET, "/v1/status", None).await?;
        let offenders = if with_offenders { Some(offenders(client).await) } else { None };
        Ok::<_, TopError>((text, at, status, offenders))
    };
    let (text, at, status, offenders) =
        tokio::time::timeout(FETCH_TIMEOUT, calls).await.map_err(|_| TopError::Timeout(FETCH_TIMEOUT))??;
    Ok(Fetched { scrape: Scrape::parse(&text)?, at, status, offenders })
}

async fn offenders(client: &AdminClient) -> Offenders {
    match client.call(Method::GET, &format!("/v1/xdp/top?n={OFFENDERS}"), None).await {
        Ok(report) => Offenders::List(offender_list(&report)),
        Err(AdminError::Status { status: StatusCode::CONFLICT, .. }) => Offenders::Off,
        Err(e) => Offenders::Error(e.to_string()),
    }
}

fn offender_list(report: &serde_json::Value) -> Vec<(String, u64)> {
    let entries = report["entries"].as_array().map(Vec::as_slice).unwrap_or_default();
    entries
        .iter()
        .map(|e| {
            let dropped = e["dropped"].as_u64().unwrap_or(0) + e["syn_dropped"].as_u64().unwrap_or(0);
            (e["source"].as_str().unwrap_or("?").to_owned(), dropped)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}
