//! What the person at the keyboard chose: sort column, route filter, pause; and the keys that
//! change them.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::stats::RouteRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Rate,
    Requests,
    Errors,
    P99,
    Overhead,
    Route,
}

impl SortBy {
    /// The next column for `s`.
    pub fn next(self) -> SortBy {
        match self {
            SortBy::Rate => SortBy::Requests,
            SortBy::Requests => SortBy::Errors,
            SortBy::Errors => SortBy::P99,
            SortBy::P99 => SortBy::Overhead,
            SortBy::Overhead => SortBy::Route,
            SortBy::Route => SortBy::Rate,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortBy::Rate => "req/s",
            SortBy::Requests => "requests",
            SortBy::Errors => "5xx",
            SortBy::P99 => "p99",
            SortBy::Overhead => "overhead",
            SortBy::Route => "route",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewState {
    pub sort: SortBy,
    /// Routes whose name contains this are shown (all when empty).
    pub filter: String,
    /// `/` was pressed: keys edit the filter until Enter or Esc.
    pub editing: bool,
    pub paused: bool,
    /// Refreshes fetched while paused (shown, so the pause is visibly holding data back).
    pub held: u64,
}

impl Default for ViewState {
    fn default() -> Self {
        ViewState { sort: SortBy::Rate, filter: String::new(), editing: false, paused: false, held: 0 }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum KeyOutcome {
    Quit,
    /// Shown data changes: draw the latest figures (after unpausing).
    Resume,
    Continue,
}

impl ViewState {
    pub fn on_key(&mut self, key: KeyEvent) -> KeyOutcome {
        if key.kind != KeyEventKind::Press {
            return KeyOutcome::Continue;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return KeyOutcome::Quit;
        }
        if self.editing {
            match key.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            return KeyOutcome::Continue;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return KeyOutcome::Quit,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('/') => {
                self.editing = true;
                self.filter.clear();
            }
            KeyCode::Char('p') | KeyCode::Char(' ') => {
                self.paused = !self.paused;
                self.held = 0;
                if !self.paused {
                    return KeyOutcome::Resume;
                }
            }
            _ => {}
        }
        KeyOutcome::Continue
    }

    /// The routes to show, filtered and sorted (largest first, names A to Z).
    pub fn rows<'a>(&self, routes: &'a [RouteRow]) -> Vec<&'a RouteRow> {
        let mut rows: Vec<&RouteRow> = routes.iter().filter(|r| r.route.contains(self.filter.as_str())).collect();
        let key = |r: &RouteRow| match self.sort {
            SortBy::Rate => r.rate,
            SortBy::Requests => Some(r.requests),
            SortBy::Errors => r.error_ratio,
            SortBy::P99 => r.p99,
            SortBy::Overhead => r.overhead_p99,
            SortBy::Route => None,
        };
        rows.sort_by(|a, b| {
            let (ka, kb) = (key(a).unwrap_or(-1.0), key(b).unwrap_or(-1.0));
            kb.total_cmp(&ka).then_with(|| a.route.cmp(&b.route))
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(state: &mut ViewState, keys: &str) {
        for c in keys.chars() {
            let code = if c == '\n' { KeyCode::Enter } else { KeyCode::Char(c) };
            state.on_key(KeyEvent::new(code, KeyModifiers::NONE));
        }
    }

    #[test]
    fn filter_sort_and_pause_keys() {
        let row = |route: &str, requests: f64, rate: f64| RouteRow {
            route: route.into(),
            requests,
            rate: Some(rate),
            ..RouteRow::default()
        };
        let routes = [row("users", 9.0, 1.0), row("orders", 3.0, 5.0), row("order-admin", 1.0, 2.0)];
        let names = |s: &ViewState| s.rows(&routes).iter().map(|r| r.route.clone()).collect::<Vec<_>>();
        let mut s = ViewState::default();
        assert_eq!(names(&s), ["orders", "order-admin", "users"]);
        press(&mut s, "s");
        assert_eq!(
            (s.sort, names(&s)),
            (SortBy::Requests, vec!["users".into(), "orders".into(), "order-admin".into()])
        );
        press(&mut s, "ssss");
        assert_eq!((s.sort, names(&s)), (SortBy::Route, vec!["order-admin".into(), "orders".into(), "users".into()]));
        // While editing the filter, s and q are text.
        press(&mut s, "/ordersq\n");
        assert_eq!(s.filter, "ordersq");
        press(&mut s, "/ord\n");
        assert_eq!(names(&s), ["order-admin", "orders"]);
        press(&mut s, "p");
        assert!(s.paused);
        assert_eq!(s.on_key(KeyEvent::new(KeyCode::Char('p'), KeyModifiers::NONE)), KeyOutcome::Resume);
        assert_eq!(s.on_key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE)), KeyOutcome::Quit);
    }
}
