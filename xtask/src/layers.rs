//! `cargo xtask layers`: the daemon's module import graph, checked against its layers.
//!
//! Reads every file of `gateway-userspace/src` with `syn` (a real Rust parser, so `use` trees,
//! inline paths and `#[cfg(test)]` items are told apart without regexes), resolves `crate::` and
//! `super::` paths to top-level modules, and prints the graph, every import cycle (strongly
//! connected component) and every import that points up the layer table below. `test` runs it as
//! a step, so a new upward import fails CI; `--graph` prints the edges (the "before and after"
//! in ARCHITECTURE.md comes from it).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use syn::visit::Visit;

use crate::cmd::workspace_root;

/// Top-level modules from the bottom up; a module may import its own layer's modules (a DAG is
/// still required: cycles are reported separately) and any lower layer, never a higher one.
pub const LAYERS: &[(&str, &[&str])] = &[
    // Leaf utilities with no knowledge of requests.
    ("base", &["metrics", "kv", "logging", "systemd", "cert", "socket"]),
    // The contracts every feature is written against: the phase trait, the request context and
    // connection facts, the refusal trait and its one response table, the consumer model.
    ("contracts", &["request", "error", "consumer"]),
    // Capabilities: each owns its config spec, errors, metrics and long-lived parts.
    (
        "features",
        &["tls", "route", "upstream", "proxy", "auth", "limits", "ratelimit", "budget", "audit", "ebpf", "access"],
    ),
    // The driver and composition: config schema/validation over the features' specs, the
    // snapshot, the request driver, connections, workers, the daemon and its CLI.
    (
        "driver",
        &[
            "config", "snapshot", "pipeline", "listener", "worker", "state", "admin", "daemon", "demo", "cli", "top",
            "mcp",
        ],
    ),
];

#[derive(clap::Args, Default)]
pub struct Options {
    /// Print every module-to-module import.
    #[arg(long)]
    graph: bool,
    /// Report only; do not fail on cycles or upward imports.
    #[arg(long)]
    no_fail: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    let src = workspace_root().join("gateway-userspace/src");
    let graph = Graph::read(&src)?;
    if opts.graph {
        for (from, tos) in &graph.edges {
            let tos: Vec<&str> = tos.keys().map(String::as_str).collect();
            println!("{from} -> {}", tos.join(", "));
        }
    }
    let cycles = graph.cycles();
    for cycle in &cycles {
        println!("cycle of {} modules: {}", cycle.len(), cycle.join(" ⇄ "));
    }
    let upward = graph.upward_imports();
    for (from, to, file) in &upward {
        println!("upward import: {from} -> {to} ({file})");
    }
    let unplaced = graph.unplaced();
    for m in &unplaced {
        println!("module `{m}` is in no layer (xtask/src/layers.rs)");
    }
    println!(
        "{} modules, {} imports between them, {} cycles, {} upward imports",
        graph.modules.len(),
        graph.edges.values().map(BTreeMap::len).sum::<usize>(),
        cycles.len(),
        upward.len()
    );
    if !opts.no_fail && (!cycles.is_empty() || !upward.is_empty() || !unplaced.is_empty()) {
        bail!("module layers broken (see above)");
    }
    Ok(())
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

struct Graph {
    modules: BTreeSet<String>,
    /// from → to → the first file (relative to src) that imports it.
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

impl Graph {
    fn read(src: &Path) -> Result<Graph> {
        let mut files = Vec::new();
        collect(src, &mut files)?;
        let modules: BTreeSet<String> = files
            .iter()
            .filter_map(|f| top_module(&f.strip_prefix(src).ok()?.to_string_lossy()))
            .filter(|m| m != "lib" && m != "main")
            .collect();
        let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for file in &files {
            let rel = file.strip_prefix(src)?.to_string_lossy().into_owned();
            let Some(from) = top_module(&rel) else { continue };
            if from == "lib" || from == "main" || is_test_file(&rel) {
                continue;
            }
            let text = fs::read_to_string(file)?;
            let ast = syn::parse_file(&text).with_context(|| format!("parsing {rel}"))?;
            let mut visitor = Imports { paths: Vec::new(), depth_in_file: module_depth(&rel) };
            visitor.visit_file(&ast);
            for to in visitor.paths {
                if to != from && modules.contains(&to) {
                    edges.entry(from.clone()).or_default().entry(to).or_insert_with(|| rel.clone());
                }
            }
        }
        Ok(Graph { modules, edges })
    }

    /// Strongly connected components with more than one module (Tarjan).
    fn cycles(&self) -> Vec<Vec<String>> {
        struct State<'a> {
            g: &'a Graph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on_stack: BTreeSet<&'a str>,
            next: usize,
            out: Vec<Vec<String>>,
        }
        fn connect<'a>(s: &mut State<'a>, v: &'a str) {
            s.index.insert(v, s.next);
            s.low.insert(v, s.next);
            s.next += 1;
            s.stack.push(v);
            s.on_stack.insert(v);
            let g = s.g;
            for w in g.edges.get(v).into_iter().flat_map(|m| m.keys()) {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    connect(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if s.low[v] == s.index[v] {
                let mut component = Vec::new();
                while let Some(w) = s.stack.pop() {
                    s.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    s.out.push(component);
                }
            }
        }
        let mut s = State {
            g: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            next: 0,
            out: Vec::new(),
        };
        for m in &self.modules {
            if !s.index.contains_key(m.as_str()) {
                connect(&mut s, m);
            }
        }
        s.out
    }

    fn upward_imports(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (from, tos) in &self.edges {
            for (to, file) in tos {
                if let (Some(lf), Some(lt)) = (layer_of(from), layer_of(to))
                    && lt > lf
                {
                    out.push((from.clone(), to.clone(), file.clone()));
                }
            }
        }
        out
    }

    fn unplaced(&self) -> Vec<String> {
        self.modules.iter().filter(|m| layer_of(m).is_none()).cloned().collect()
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

/// `auth/jwt.rs` → `auth`; `snapshot.rs` → `snapshot`.
fn top_module(rel: &str) -> Option<String> {
    let first = rel.split('/').next()?;
    Some(first.strip_suffix(".rs").unwrap_or(first).to_owned())
}

/// Unit-test files (`tests.rs`, `testkit.rs`, `*/tests/*`) may reach anywhere.
fn is_test_file(rel: &str) -> bool {
    rel.split('/').any(|part| matches!(part, "tests.rs" | "tests" | "testkit.rs" | "testing.rs"))
}

/// How many `super::` steps from this file's module reach the crate root: `auth.rs` is 1 deep
/// (`super` is the crate), `auth/jwt.rs` 2.
fn module_depth(rel: &str) -> usize {
    rel.split('/').count()
}

struct Imports {
    paths: Vec<String>,
    depth_in_file: usize,
}

impl Imports {
    /// The top-level module a path names, if it leaves the crate root.
    fn resolve(&self, segments: &[String], inline_depth: usize) -> Option<String> {
        let supers = segments.iter().take_while(|s| *s == "super").count();
        match segments.first().map(String::as_str) {
            Some("crate") => segments.get(1).cloned(),
            Some("super") if supers >= self.depth_in_file + inline_depth => segments.get(supers).cloned(),
            _ => None,
        }
    }
}

impl<'ast> Visit<'ast> for Imports {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if is_cfg_test(&m.attrs) {
            return;
        }
        syn::visit::visit_item_mod(self, m);
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if is_cfg_test(&f.attrs) {
            return;
        }
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if is_cfg_test(&u.attrs) {
            return;
        }
        let mut leaves = Vec::new();
        use_paths(&u.tree, &mut Vec::new(), &mut leaves);
        for p in leaves {
            if let Some(m) = self.resolve(&p, 0) {
                self.paths.push(m);
            }
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(m) = self.resolve(&segments, 0) {
            self.paths.push(m);
        }
        syn::visit::visit_path(self, p);
    }
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.parse_args::<syn::Meta>().is_ok_and(|m| m.path().is_ident("test")))
}

fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => out.push(prefix.iter().cloned().chain([n.ident.to_string()]).collect()),
        syn::UseTree::Rename(r) => out.push(prefix.iter().cloned().chain([r.ident.to_string()]).collect()),
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_paths(t, prefix, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layer_module_is_listed_once() {
        let mut seen = BTreeSet::new();
        for (_, mods) in LAYERS {
            for m in *mods {
                assert!(seen.insert(*m), "{m} is in two layers");
            }
        }
    }

    #[test]
    fn finds_crate_and_super_paths_and_skips_tests() {
        let ast = syn::parse_file(
            "use crate::{auth::AuthError, kv};\nuse super::super::tls::X;\nfn f() { crate::budget::g(); }\n\
             #[cfg(test)] mod tests { use crate::daemon::D; }",
        )
        .unwrap();
        let mut v = Imports { paths: Vec::new(), depth_in_file: 2 };
        v.visit_file(&ast);
        v.paths.sort();
        v.paths.dedup();
        assert_eq!(v.paths, ["auth", "budget", "kv", "tls"]);
    }
}
