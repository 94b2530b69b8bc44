//! The README's classification table against the code: every reason and
//! SQLSTATE the table names (in backticks) is classed there as the code
//! classes it, and every poison reason the code knows is in the table.

use std::collections::BTreeSet;

use spansink::error::{classify_sqlstate, Class, Reason};

/// The table's rows: (class, what), from the README's Classification section.
fn rows() -> Vec<(Class, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("### Classification")
        .nth(1)
        .expect("a Classification section")
        .split("\n### ")
        .next()
        .unwrap_or_default();
    section
        .lines()
        .filter(|l| l.starts_with("| "))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let class = match cells.get(1)?.split(',').next()? {
                "transient" => Class::Transient,
                "poison" => Class::Poison,
                "fatal" => Class::Fatal,
                _ => return None,
            };
            Some((class, cells.get(2)?.to_string()))
        })
        .collect()
}

/// The backticked words of a cell.
fn quoted(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

fn is_sqlstate(word: &str) -> bool {
    matches!(word.len(), 2 | 5)
        && word
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
}

#[test]
fn every_sqlstate_in_the_readme_table_is_classed_as_the_code_classes_it() {
    let mut checked = 0;
    for (class, what) in rows() {
        for word in quoted(&what).filter(|w| is_sqlstate(w)) {
            // A class is checked through its first code and one more.
            let codes = if word.len() == 2 {
                vec![format!("{word}000"), format!("{word}P99")]
            } else {
                vec![word.to_string()]
            };
            for code in codes {
                assert_eq!(classify_sqlstate(&code), class, "{code} in row {what:?}");
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 20,
        "the table names SQLSTATEs: {checked} checked"
    );
}

#[test]
fn every_reason_is_in_the_readme_table_as_poison_and_nothing_else() {
    let mut listed = BTreeSet::new();
    for (class, what) in rows() {
        for word in quoted(&what) {
            if let Ok(reason) = word.parse::<Reason>() {
                assert_eq!(class, Class::Poison, "{reason} is listed as {class:?}");
                listed.insert(reason.as_str());
            }
        }
    }
    let known: BTreeSet<&str> = Reason::all().iter().map(|r| r.as_str()).collect();
    assert_eq!(listed, known, "reasons in the README table vs. the code");
}

#[test]
fn the_readme_table_has_rows_for_every_class() {
    let rows = rows();
    for class in [Class::Transient, Class::Poison, Class::Fatal] {
        assert!(rows.iter().any(|(c, _)| *c == class), "{class:?}: {rows:?}");
    }
}
