//! Where a process's resident memory grew, mapping by mapping (`/proc/PID/smaps`): the guest
//! client prints it for each count, so a fixed growth (a heap arena, a thread's stack, a slab of
//! tokio's) can be told from one that scales with the connections.

use std::collections::HashMap;

use anyhow::{Context as _, Result};

/// Resident bytes per mapping, keyed by its start address and name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot(HashMap<(u64, String), u64>);

impl Snapshot {
    pub fn read(pid: u32) -> Result<Snapshot> {
        let path = format!("/proc/{pid}/smaps");
        parse(&std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?)
    }

    /// Mappings whose resident size changed by at least `min` bytes from `self` to `later`,
    /// largest change first: (start, name, before, after).
    pub fn changes(&self, later: &Snapshot, min: u64) -> Vec<(u64, String, u64, u64)> {
        let mut keys: Vec<&(u64, String)> = self.0.keys().chain(later.0.keys()).collect();
        keys.sort();
        keys.dedup();
        let mut out: Vec<(u64, String, u64, u64)> = keys
            .into_iter()
            .map(|k| (k.0, k.1.clone(), self.0.get(k).copied().unwrap_or(0), later.0.get(k).copied().unwrap_or(0)))
            .filter(|(_, _, a, b)| a.abs_diff(*b) >= min)
            .collect();
        out.sort_by_key(|(_, _, a, b)| std::cmp::Reverse(a.abs_diff(*b)));
        out
    }
}

/// A mapping's header (`start-end perms offset dev inode [name]`) starts it; its `Rss:` line
/// follows.
fn parse(text: &str) -> Result<Snapshot> {
    let mut map = HashMap::new();
    let mut current: Option<(u64, String)> = None;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((start, _)) = first.split_once('-')
            && let Ok(start) = u64::from_str_radix(start, 16)
        {
            let name = fields.nth(4).unwrap_or("[anon]").to_owned();
            current = Some((start, name));
        } else if first == "Rss:"
            && let Some(key) = current.take()
        {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).with_context(|| format!("bad line {line:?}"))?;
            *map.entry(key).or_default() += kib * 1024;
        }
    }
    Ok(Snapshot(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_found_per_mapping() -> Result<()> {
        let before = parse(
            "7f0000000000-7f0000400000 rw-p 00000000 00:00 0 \nSize: 4096 kB\nRss: 100 kB\n\
             7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\nRss: 12 kB\n",
        )?;
        let after = parse(
            "7f0000000000-7f0000400000 rw-p 00000000 00:00 0 \nSize: 4096 kB\nRss: 2148 kB\n\
             7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\nRss: 16 kB\n\
             7e0000000000-7e0000200000 rw-p 00000000 00:00 0 \nRss: 64 kB\n",
        )?;
        let changes = after.changes(&before, 0);
        assert_eq!(changes.first(), Some(&(0x7f00_0000_0000, "[anon]".to_owned(), 2148 * 1024, 100 * 1024)));
        let grown = before.changes(&after, 32 * 1024);
        assert_eq!(grown.len(), 2, "{grown:?}");
        assert_eq!(grown[1], (0x7e00_0000_0000, "[anon]".to_owned(), 0, 64 * 1024));
        Ok(())
    }
}
