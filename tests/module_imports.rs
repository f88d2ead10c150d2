//! The brief's rule on module boundaries, checked on the source: no two files of `src/` import
//! each other (a child file and its parent `mod.rs` included). A file's imports are the paths it
//! names outside comments and tests: `crate::a::b`, `super::b`, `super::{b, C}`, and in a
//! `mod.rs` its children by name (`child::f()`, `use child::X`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every module file under `dir`, by module path (`src/a/mod.rs` and `src/a.rs` are `[a]`).
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Module, String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let (path, name) = (entry.path(), entry.file_name().to_string_lossy().into_owned());
        if path.is_dir() && name != "bin" {
            modules(&path, &[prefix, &[name]].concat(), out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let module = if ["mod", "lib", "main"].contains(&stem) { prefix.to_vec() } else { [prefix, &[stem.to_string()]].concat() };
            out.insert(module, std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The longest prefix of `path` that is a module file.
fn resolve(path: &[String], files: &BTreeMap<Module, String>) -> Module {
    (0..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| files.contains_key(p)).unwrap_or_default()
}

fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The modules `module`'s file imports, other than itself.
fn imports(module: &Module, text: &str, files: &BTreeMap<Module, String>) -> BTreeSet<Module> {
    let parent = module[..module.len().saturating_sub(1)].to_vec();
    let code: String = text.split("#[cfg(test)]").next().unwrap().lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n");
    let mut deps = BTreeSet::new();
    for (root, base) in [("crate::", vec![]), ("super::", parent.clone())] {
        for (at, _) in code.match_indices(root).filter(|(i, _)| !code[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')) {
            let mut rest = &code[at + root.len()..];
            let mut path = base.clone();
            while !ident(rest).is_empty() && ident(rest).starts_with(|c: char| c.is_ascii_lowercase()) && rest[ident(rest).len()..].starts_with("::") {
                path.push(ident(rest).to_string());
                rest = &rest[ident(rest).len() + 2..];
            }
            if let Some(items) = rest.strip_prefix('{') {
                for item in items[..items.find('}').unwrap_or(0)].split(',').map(|i| ident(i.trim())) {
                    let child = [&path[..], &[item.to_string()]].concat();
                    deps.insert(if files.contains_key(&child) { child } else { resolve(&path, files) });
                }
            } else if !ident(rest).is_empty() && ident(rest).starts_with(|c: char| c.is_ascii_lowercase()) {
                deps.insert(resolve(&[&path[..], &[ident(rest).to_string()]].concat(), files));
            } else {
                deps.insert(resolve(&path, files));
            }
        }
    }
    // A module reaches its children by their bare names.
    for child in files.keys().filter(|k| k.len() == module.len() + 1 && k.starts_with(module)) {
        let name = format!("{}::", child.last().unwrap());
        if code.match_indices(&name).any(|(i, _)| !code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':')) {
            deps.insert(child.clone());
        }
    }
    deps.remove(module);
    deps
}

/// The pairs of files under `src` that import each other, as `a::b <-> a`.
fn mutual_imports(src: &Path) -> Vec<String> {
    let mut files = BTreeMap::new();
    modules(src, &[], &mut files);
    let graph: BTreeMap<&Module, BTreeSet<Module>> = files.iter().map(|(m, text)| (m, imports(m, text, &files))).collect();
    let show = |m: &Module| if m.is_empty() { "crate".to_string() } else { m.join("::") };
    graph
        .iter()
        .flat_map(|(a, deps)| {
            deps.iter().filter(|b| *a < *b && graph.get(b).is_some_and(|d| d.contains(*a))).map(|b| format!("{} <-> {}", show(a), show(b))).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn no_two_files_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let pairs = mutual_imports(&src);
    assert!(pairs.is_empty(), "files that import each other (move what both need into a file of its own): {pairs:#?}");
}

/// The check finds a child and its parent, and two siblings, importing each other in every
/// spelling, and nothing in comments, tests or one-way imports.
#[test]
fn the_check_sees_each_way_of_importing() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let p = tmp.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("lib.rs", "pub mod a;\npub mod b;\nmod c;\n");
    write("a/mod.rs", "mod kid;\npub use kid::Kid;\npub struct Top;\n");
    write("a/kid.rs", "use super::{Top, other};\npub struct Kid;\n");
    write("a/other.rs", "pub fn f() { crate::b::g(); }\n");
    write("b.rs", "// crate::c::h\npub fn g() { let _ = crate::c::H; }\n#[cfg(test)]\nmod t { use crate::a::other; }\n");
    write("c.rs", "use crate::{a, b};\npub const H: u8 = b::G;\n");
    let mut pairs = mutual_imports(tmp.path());
    pairs.sort();
    assert_eq!(pairs, ["a <-> a::kid", "b <-> c"]);
}
