//! Maps a key path (`routes[1].paths[0]`) back to a line and column in the source text, so
//! semantic errors found after deserialization point at the right place.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A path into the document, rendered as `a.b[2].c`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn key(mut self, k: &str) -> Self {
        self.0.push(Seg::Key(k.to_owned()));
        self
    }

    pub fn index(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Source positions of a parsed document.
pub struct Locator<'a> {
    text: &'a str,
    root: Option<DeTable<'a>>,
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Self {
        let root = DeTable::parse(text).ok().map(|t| t.into_inner());
        Locator { text, root }
    }

    /// Line and column (1-based) of the deepest part of `path` that exists in the document.
    pub fn line_col(&self, path: &KeyPath) -> (usize, usize) {
        let span = self.span(path).unwrap_or(0..0);
        line_col(self.text, span.start)
    }

    fn span(&self, path: &KeyPath) -> Option<Range<usize>> {
        let root = self.root.as_ref()?;
        let mut best = None;
        let mut table: Option<&DeTable<'_>> = Some(root);
        let mut value: Option<&DeValue<'_>> = None;
        for seg in &path.0 {
            let next = match (seg, table, value) {
                (Seg::Key(k), Some(t), _) => t.iter().find(|(key, _)| key.get_ref() == k).map(|(key, v)| {
                    // Point at the key for tables (their value span can be a whole section).
                    let span = if v.get_ref().is_table() { key.span() } else { v.span() };
                    (span, v.get_ref())
                }),
                (Seg::Index(i), _, Some(DeValue::Array(a))) => a.get(*i).map(|v| (v.span(), v.get_ref())),
                _ => None,
            };
            let Some((span, v)) = next else { break };
            best = Some(span);
            value = Some(v);
            table = v.as_table();
        }
        best
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_array_of_tables_entries() {
        let text =
            "[server]\nworkers = 2\n\n[[routes]]\nname = \"a\"\npaths = [\"/x\", \"y\"]\n\n[[routes]]\nname = \"b\"\n";
        let loc = Locator::new(text);
        let path = KeyPath::default().key("routes").index(0).key("paths").index(1);
        assert_eq!(loc.line_col(&path), (6, 16));
        assert_eq!(loc.line_col(&KeyPath::default().key("routes").index(1).key("name")), (9, 8));
        assert_eq!(loc.line_col(&KeyPath::default().key("server").key("workers")), (2, 11));
        assert_eq!(path.to_string(), "routes[0].paths[1]");
    }

    #[test]
    fn missing_keys_fall_back_to_the_deepest_existing_parent() {
        let text = "[[routes]]\nname = \"a\"\n";
        let loc = Locator::new(text);
        let (line, _) = loc.line_col(&KeyPath::default().key("routes").index(0).key("service"));
        assert_eq!(line, 1);
    }
}
