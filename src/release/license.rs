//! Licences: which are open, for what kind of artifact, and the full texts we ship.
//!
//! The Model Openness Framework counts a component only under an open licence: OSI-approved or
//! FSF-libre for code, an open data licence for data and weights, an open content licence for
//! documents. A licence of the wrong kind (a code licence on a data set) still counts, with a
//! warning. Identifiers are SPDX; comparison ignores case, because the Hugging Face model card
//! writes them in lower case (`apache-2.0`).

/// What a licence is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Code,
    Data,
    Document,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Code => "code",
            Kind::Data => "data",
            Kind::Document => "document",
        }
    }
}

pub struct License {
    pub id: &'static str,
    /// Open in the MOF sense (OSI-approved, FSF-libre, or an open data/content licence).
    pub open: bool,
    /// The kinds of artifact it is written for; empty for a non-open licence.
    pub kinds: &'static [Kind],
    /// The full text, when tinylm ships it (`src/release/licenses/<id>.txt`).
    pub text: Option<&'static str>,
}

use Kind::*;

/// The licences tinylm knows. Texts: Apache-2.0 and CC0-1.0 from Debian's
/// /usr/share/common-licenses, CDLA-Permissive-2.0 as published by the Linux Foundation (the
/// copy in the webpki-roots crate), MIT the standard text with our copyright line, CC-BY-4.0
/// the Creative Commons legal code (plain-text form).
pub const KNOWN: &[License] = &[
    License { id: "MIT", open: true, kinds: &[Code], text: Some(include_str!("licenses/MIT.txt")) },
    License {
        id: "Apache-2.0",
        open: true,
        kinds: &[Code],
        text: Some(include_str!("licenses/Apache-2.0.txt")),
    },
    License {
        id: "CC0-1.0",
        open: true,
        // A public-domain dedication: FSF-libre for code, open for data and documents.
        kinds: &[Code, Data, Document],
        text: Some(include_str!("licenses/CC0-1.0.txt")),
    },
    License {
        id: "CDLA-Permissive-2.0",
        open: true,
        kinds: &[Data],
        text: Some(include_str!("licenses/CDLA-Permissive-2.0.txt")),
    },
    License {
        id: "CC-BY-4.0",
        open: true,
        kinds: &[Data, Document],
        text: Some(include_str!("licenses/CC-BY-4.0.txt")),
    },
    License { id: "BSD-2-Clause", open: true, kinds: &[Code], text: None },
    License { id: "BSD-3-Clause", open: true, kinds: &[Code], text: None },
    License { id: "ISC", open: true, kinds: &[Code], text: None },
    License { id: "MPL-2.0", open: true, kinds: &[Code], text: None },
    License { id: "GPL-2.0", open: true, kinds: &[Code], text: None },
    License { id: "GPL-3.0", open: true, kinds: &[Code], text: None },
    License { id: "LGPL-3.0", open: true, kinds: &[Code], text: None },
    License { id: "AGPL-3.0", open: true, kinds: &[Code], text: None },
    License { id: "Unlicense", open: true, kinds: &[Code], text: None },
    License { id: "CC-BY-SA-4.0", open: true, kinds: &[Data, Document], text: None },
    License { id: "CDLA-Permissive-1.0", open: true, kinds: &[Data], text: None },
    License { id: "CDLA-Sharing-1.0", open: true, kinds: &[Data], text: None },
    License { id: "ODC-By-1.0", open: true, kinds: &[Data], text: None },
    License { id: "ODbL-1.0", open: true, kinds: &[Data], text: None },
    License { id: "PDDL-1.0", open: true, kinds: &[Data], text: None },
    License { id: "CC-BY-NC-4.0", open: false, kinds: &[], text: None },
    License { id: "CC-BY-NC-SA-4.0", open: false, kinds: &[], text: None },
    License { id: "CC-BY-ND-4.0", open: false, kinds: &[], text: None },
    License { id: "CC-BY-NC-ND-4.0", open: false, kinds: &[], text: None },
    License { id: "OpenRAIL", open: false, kinds: &[], text: None },
    License { id: "CreativeML-OpenRAIL-M", open: false, kinds: &[], text: None },
    License { id: "BigScience-OpenRAIL-M", open: false, kinds: &[], text: None },
    License { id: "Llama2", open: false, kinds: &[], text: None },
    License { id: "Llama3", open: false, kinds: &[], text: None },
    License { id: "Llama3.1", open: false, kinds: &[], text: None },
    License { id: "Gemma", open: false, kinds: &[], text: None },
];

/// Spellings that mean "no licence was given".
pub const UNLICENSED: &str = "unlicensed";

pub fn find(id: &str) -> Option<&'static License> {
    let id = id.trim();
    // HF ids drop "-only"/"-or-later" from the GPL family.
    let base = id.trim_end_matches("-only").trim_end_matches("-or-later");
    KNOWN.iter().find(|l| l.id.eq_ignore_ascii_case(id) || l.id.eq_ignore_ascii_case(base))
}

/// The parts of an SPDX expression joined by OR (any one may be chosen) or AND (all apply).
/// Parentheses and WITH exceptions are out of scope: such an expression is one opaque id.
fn parts(expr: &str) -> (Vec<&str>, bool) {
    if expr.contains(" OR ") {
        (expr.split(" OR ").map(str::trim).collect(), true)
    } else {
        (expr.split(" AND ").map(str::trim).collect(), false)
    }
}

/// How a licence expression stands for a component of the given kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Open and of the right kind.
    Open,
    /// Open, but written for another kind of artifact (counts, with this warning).
    WrongKind(String),
    /// Not open, or not known to be open: the component does not count.
    NotOpen(String),
    /// No licence at all.
    Unlicensed,
}

pub fn judge(expr: &str, kind: Kind) -> Verdict {
    let expr = expr.trim();
    if expr.is_empty() || expr.eq_ignore_ascii_case(UNLICENSED) || expr.eq_ignore_ascii_case("none") {
        return Verdict::Unlicensed;
    }
    let (ids, any) = parts(expr);
    let each: Vec<Verdict> = ids
        .iter()
        .map(|id| match find(id) {
            None => Verdict::NotOpen(format!(
                "{id} is not a licence tinylm knows to be open (use an SPDX id such as Apache-2.0, MIT, CDLA-Permissive-2.0, CC0-1.0, CC-BY-4.0)"
            )),
            Some(l) if !l.open => Verdict::NotOpen(format!("{} is not an open licence (MOF counts only open licences)", l.id)),
            Some(l) if l.kinds.contains(&kind) => Verdict::Open,
            Some(l) => Verdict::WrongKind(format!(
                "{} is a {} licence; a {} component wants a {} licence",
                l.id,
                l.kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join("/"),
                kind.name(),
                kind.name()
            )),
        })
        .collect();
    let rank = |v: &Verdict| match v {
        Verdict::Open => 0,
        Verdict::WrongKind(_) => 1,
        Verdict::NotOpen(_) => 2,
        Verdict::Unlicensed => 3,
    };
    // OR: the best alternative decides; AND: the worst part does.
    let pick = if any { each.iter().min_by_key(|v| rank(v)) } else { each.iter().max_by_key(|v| rank(v)) };
    pick.cloned().unwrap_or(Verdict::Unlicensed)
}

/// The known ids in an expression that have a shipped text, in order.
pub fn texts(expr: &str) -> Vec<&'static License> {
    parts(expr).0.into_iter().filter_map(find).filter(|l| l.text.is_some()).collect()
}

/// The canonical id spelling of every part of an expression, or an error naming the first
/// unknown one.
pub fn canonical(expr: &str) -> std::result::Result<String, String> {
    let (ids, any) = parts(expr.trim());
    let mut out = Vec::new();
    for id in ids {
        match find(id) {
            Some(l) => out.push(l.id),
            None if id.eq_ignore_ascii_case(UNLICENSED) => out.push(UNLICENSED),
            None => return Err(id.to_string()),
        }
    }
    Ok(out.join(if any { " OR " } else { " AND " }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_wrong_kind_and_closed() {
        assert_eq!(judge("Apache-2.0", Code), Verdict::Open);
        assert_eq!(judge("apache-2.0", Code), Verdict::Open);
        assert_eq!(judge("MIT OR Apache-2.0", Code), Verdict::Open);
        assert!(matches!(judge("MIT", Data), Verdict::WrongKind(_)));
        assert!(matches!(judge("cc-by-nc-4.0", Document), Verdict::NotOpen(_)));
        assert!(matches!(judge("llama2", Data), Verdict::NotOpen(_)));
        assert!(matches!(judge("my-own-licence", Data), Verdict::NotOpen(_)));
        assert_eq!(judge("", Data), Verdict::Unlicensed);
        assert_eq!(judge("unlicensed", Data), Verdict::Unlicensed);
        // AND: the worst part decides.
        assert!(matches!(judge("MIT AND CC-BY-NC-4.0", Code), Verdict::NotOpen(_)));
        assert_eq!(canonical("mit OR apache-2.0").unwrap(), "MIT OR Apache-2.0");
        assert!(canonical("nope").is_err());
    }

    #[test]
    fn shipped_texts_are_the_full_licences() {
        let has = |id: &str, needle: &str| {
            let t = find(id).and_then(|l| l.text).unwrap_or_default();
            assert!(t.contains(needle), "{id} text lacks {needle:?}");
            t.len()
        };
        assert!(has("Apache-2.0", "END OF TERMS AND CONDITIONS") > 10_000);
        assert!(has("MIT", "THE SOFTWARE IS PROVIDED \"AS IS\"") > 1000);
        assert!(has("CC0-1.0", "Statement of Purpose") > 6000);
        assert!(has("CC-BY-4.0", "Attribution 4.0 International Public License") > 15_000);
        assert!(!find("CC-BY-4.0").and_then(|l| l.text).unwrap_or_default().contains("ShareAlike"));
        assert!(
            has("CDLA-Permissive-2.0", "Community Data License Agreement - Permissive - Version 2.0") > 2000
        );
    }
}
