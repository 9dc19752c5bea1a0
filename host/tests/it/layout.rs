//! How the house is laid out, checked on its own source: no circle of
//! imports among the modules of the host or of the vault, no source file
//! over 1,000 lines, no function of the product (the host, the vault, the
//! SDK, the first-party connectors) over 150 lines. Tests and their
//! fixtures may run longer: a scenario reads best as one story.
//!
//! The imports are read with `syn`, the parser Rust's procedural macros
//! use: every file of a library (`host/src` under its `lib.rs`, and the
//! vault's crate, `vault/src`) is one module (`a.rs`
//! and `a/mod.rs` are `a`, `a/b.rs` is `a::b`). Every path written in a
//! file — in a `use`, a type, an expression, a pattern, an `impl` — is
//! resolved against the module tree (`crate::`, `super::`, `self::` and a
//! child module's own name) to the deepest file module it names; a path
//! that lands in another file is an arrow from this file to that one.
//! Declaring a child (`mod b;`) is not an arrow, and items under
//! `#[cfg(test)]` are left out: a module's own unit tests may reach
//! anywhere. A circle is a strongly connected set of two or more files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::Visit;

const MAX_FILE_LINES: usize = 1_000;
const MAX_FN_LINES: usize = 150;

type Module = Vec<String>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A library's modules (`host/src` or `vault/src`), each with its parsed
/// file.
fn library(crate_src: &str) -> BTreeMap<Module, syn::File> {
    let src = workspace().join(crate_src);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut modules = BTreeMap::new();
    for path in files {
        let relative = path.strip_prefix(&src).expect("under src");
        let mut parts: Module = relative
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        match parts.last().map(String::as_str) {
            Some("main") if parts.len() == 1 => continue, // the binary, its own crate
            Some("lib") if parts.len() == 1 => parts.clear(),
            Some("mod") => {
                parts.pop();
            }
            _ => {}
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let file =
            syn::parse_file(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        modules.insert(parts, file);
    }
    modules
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// Every path a file writes, as its segments, outside `#[cfg(test)]`.
#[derive(Default)]
struct Paths {
    found: Vec<Vec<String>>,
}

impl Paths {
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut path = prefix.clone();
                if n.ident != "self" {
                    path.push(n.ident.to_string());
                }
                self.found.push(path);
            }
            syn::UseTree::Rename(r) => {
                let mut path = prefix.clone();
                if r.ident != "self" {
                    path.push(r.ident.to_string());
                }
                self.found.push(path);
            }
            syn::UseTree::Glob(_) => self.found.push(prefix.clone()),
            syn::UseTree::Group(g) => {
                for tree in &g.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    /// `pub(super)` and `pub(in path)` say who may see an item; they
    /// import nothing.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.found
            .push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }
}

/// The file module a path written in `from` lands in, if it is another
/// file of the library.
fn resolve(
    modules: &BTreeMap<Module, syn::File>,
    from: &Module,
    path: &[String],
) -> Option<Module> {
    let mut base = from.clone();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        // A name alone is a local or an item of this file; a module is
        // named by a path through it (`child::item`).
        Some(first) if rest.len() > 1 => {
            let mut child = from.clone();
            child.push(first.to_owned());
            if !modules.contains_key(&child) {
                return None;
            }
        }
        _ => return None,
    }
    let mut full = base;
    full.extend(rest.iter().cloned());
    while !full.is_empty() && !modules.contains_key(&full) {
        full.pop();
    }
    (full != *from).then_some(full)
}

fn name(module: &Module) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

/// Tarjan's strongly connected components, keeping those of two or more.
fn circles(arrows: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Walk<'a> {
        arrows: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a Module) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in &self.arrows[v] {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut circle = Vec::new();
                while let Some(w) = self.stack.pop() {
                    circle.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if circle.len() > 1 {
                    circle.sort();
                    self.found.push(circle);
                }
            }
        }
    }
    let mut walk = Walk {
        arrows,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in arrows.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

/// The arrows between `modules`: from -> to -> the paths that tie them.
fn ties(
    modules: &BTreeMap<Module, syn::File>,
) -> BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>> {
    let mut ties: BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>> = BTreeMap::new();
    for (module, file) in modules {
        let mut paths = Paths::default();
        paths.visit_file(file);
        let entry = ties.entry(module.clone()).or_default();
        for path in paths.found {
            if let Some(to) = resolve(modules, module, &path) {
                entry.entry(to).or_default().insert(path.join("::"));
            }
        }
    }
    ties
}

/// The circles among `modules`, each with the paths that tie it, in words.
fn circles_in(modules: &BTreeMap<Module, syn::File>) -> (Vec<Vec<Module>>, String) {
    let ties = ties(modules);
    let arrows: BTreeMap<Module, BTreeSet<Module>> = ties
        .iter()
        .map(|(from, to)| (from.clone(), to.keys().cloned().collect()))
        .collect();
    let found = circles(&arrows);
    let mut report = String::new();
    for circle in &found {
        let names: Vec<String> = circle.iter().map(name).collect();
        report.push_str(&format!(
            "circle of {}: {}\n",
            circle.len(),
            names.join(", ")
        ));
        for from in circle {
            for (to, paths) in &ties[from] {
                if circle.contains(to) {
                    let some: Vec<&String> = paths.iter().take(4).collect();
                    report.push_str(&format!("  {} -> {}: {some:?}\n", name(from), name(to)));
                }
            }
        }
    }
    (found, report)
}

/// The reader itself, on a small tree: a parent and child that name each
/// other are a circle, whichever way each names the other; a visibility,
/// a module's own tests and a local named like a child module are not
/// arrows.
#[test]
fn the_import_reader_finds_a_circle_and_only_that() {
    let file = |text: &str| syn::parse_file(text).expect("parse");
    let module = |path: &str| -> Module {
        path.split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let modules: BTreeMap<Module, syn::File> = [
        ("", "mod a; mod b; mod c; mod d;"),
        (
            "a",
            "mod inner; pub fn f() -> inner::Thing { inner::make() }",
        ),
        (
            "a::inner",
            "pub struct Thing; pub fn make() -> Thing { let _ = super::f; Thing }",
        ),
        (
            "b",
            "pub(in crate::c) fn g() {} #[cfg(test)] mod tests { use crate::c::h; }",
        ),
        ("c", "pub fn h() { crate::b::g() }"),
        ("d", "mod e; pub fn g() -> u8 { let e = 1; e }"),
        ("d::e", "pub fn h() -> u8 { super::g() }"),
    ]
    .into_iter()
    .map(|(path, text)| (module(path), file(text)))
    .collect();
    let (found, report) = circles_in(&modules);
    assert_eq!(
        found,
        vec![vec![module("a"), module("a::inner")]],
        "{report}"
    );
}

#[test]
fn no_circle_of_imports_among_the_host_modules() {
    for (crate_src, at_least) in [("host/src", 60), ("vault/src", 15)] {
        let modules = library(crate_src);
        assert!(
            modules.len() >= at_least,
            "read {} modules of {crate_src}",
            modules.len()
        );
        let (found, report) = circles_in(&modules);
        assert!(
            found.is_empty(),
            "imports in {crate_src} that go round in a circle:\n{report}"
        );
    }
}

/// The project's own Rust sources: the host, the SDK, the connectors,
/// their tests and benches.
fn sources() -> Vec<PathBuf> {
    let root = workspace();
    let mut files = Vec::new();
    for dir in [
        "host/src",
        "host/tests",
        "host/benches",
        "host/build.rs",
        "sdk",
        "connectors",
    ] {
        let path = root.join(dir);
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn no_source_file_over_a_thousand_lines() {
    let root = workspace();
    let files = sources();
    assert!(files.len() > 40, "read {} files", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(path).expect("read").lines().count();
            (lines > MAX_FILE_LINES).then(|| {
                format!(
                    "{}: {lines}",
                    path.strip_prefix(&root).unwrap_or(path).display()
                )
            })
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines: {long:#?}"
    );
}

/// Every function and method with the lines it spans.
#[derive(Default)]
struct Functions {
    found: Vec<(String, usize)>,
}

impl Functions {
    fn add(&mut self, name: &syn::Ident, span: proc_macro2::Span) {
        let lines = span.end().line - span.start().line + 1;
        self.found
            .push((format!("{name} (line {})", span.start().line), lines));
    }
}

impl<'ast> Visit<'ast> for Functions {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_test_only(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.add(&f.sig.ident, f.span());
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.add(&f.sig.ident, f.span());
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        self.add(&f.sig.ident, f.span());
        syn::visit::visit_trait_item_fn(self, f);
    }
}

/// The product's own Rust sources: the host library and binary, the SDK,
/// the first-party connectors (not the test fixtures under
/// `connectors/testing`).
fn product() -> Vec<PathBuf> {
    let root = workspace();
    sources()
        .into_iter()
        .filter(|p| {
            let p = p.strip_prefix(&root).unwrap_or(p);
            (p.starts_with("host/src")
                || p.starts_with("vault/src")
                || p.starts_with("sdk/src")
                || p.starts_with("connectors"))
                && !p.starts_with("connectors/testing")
        })
        .collect()
}

#[test]
fn no_function_over_a_hundred_and_fifty_lines() {
    let root = workspace();
    let mut long = Vec::new();
    let mut counted = 0;
    for path in product() {
        let text = std::fs::read_to_string(&path).expect("read");
        let file =
            syn::parse_file(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        let mut functions = Functions::default();
        functions.visit_file(&file);
        counted += functions.found.len();
        for (name, lines) in functions.found {
            if lines > MAX_FN_LINES {
                let file = path
                    .strip_prefix(&root)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                long.push(format!("{file}: {name}: {lines} lines"));
            }
        }
    }
    assert!(counted > 500, "read {counted} functions");
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines: {long:#?}"
    );
}
