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
}

impl License {
    /// The full text as SPDX's licence list publishes it (the `license` crate embeds list
    /// 3.29), for every SPDX id; None for the non-SPDX ids (Hugging Face's `llama2`, ...). A
    /// release ships these texts byte for byte: a licence text must be the canonical one.
    pub fn text(&self) -> Option<&'static str> {
        self.id.parse::<&dyn license::License>().ok().map(|l| l.text())
    }
}

use Kind::*;

/// The licences tinylm knows, with what they are open for. Their texts come from SPDX
/// (`License::text`).
pub const KNOWN: &[License] = &[
    License { id: "MIT", open: true, kinds: &[Code] },
    License { id: "Apache-2.0", open: true, kinds: &[Code] },
    License {
        id: "CC0-1.0",
        open: true,
        // A public-domain dedication: FSF-libre for code, open for data and documents.
        kinds: &[Code, Data, Document],
    },
    License { id: "CDLA-Permissive-2.0", open: true, kinds: &[Data] },
    License { id: "CC-BY-4.0", open: true, kinds: &[Data, Document] },
    License { id: "BSD-2-Clause", open: true, kinds: &[Code] },
    License { id: "BSD-3-Clause", open: true, kinds: &[Code] },
    License { id: "ISC", open: true, kinds: &[Code] },
    License { id: "MPL-2.0", open: true, kinds: &[Code] },
    License { id: "GPL-2.0", open: true, kinds: &[Code] },
    License { id: "GPL-3.0", open: true, kinds: &[Code] },
    License { id: "LGPL-3.0", open: true, kinds: &[Code] },
    License { id: "AGPL-3.0", open: true, kinds: &[Code] },
    License { id: "Unlicense", open: true, kinds: &[Code] },
    License { id: "CC-BY-SA-4.0", open: true, kinds: &[Data, Document] },
    License { id: "CDLA-Permissive-1.0", open: true, kinds: &[Data] },
    License { id: "CDLA-Sharing-1.0", open: true, kinds: &[Data] },
    License { id: "ODC-By-1.0", open: true, kinds: &[Data] },
    License { id: "ODbL-1.0", open: true, kinds: &[Data] },
    License { id: "PDDL-1.0", open: true, kinds: &[Data] },
    License { id: "CC-BY-NC-4.0", open: false, kinds: &[] },
    License { id: "CC-BY-NC-SA-4.0", open: false, kinds: &[] },
    License { id: "CC-BY-ND-4.0", open: false, kinds: &[] },
    License { id: "CC-BY-NC-ND-4.0", open: false, kinds: &[] },
    License { id: "OpenRAIL", open: false, kinds: &[] },
    License { id: "CreativeML-OpenRAIL-M", open: false, kinds: &[] },
    License { id: "BigScience-OpenRAIL-M", open: false, kinds: &[] },
    License { id: "Llama2", open: false, kinds: &[] },
    License { id: "Llama3", open: false, kinds: &[] },
    License { id: "Llama3.1", open: false, kinds: &[] },
    License { id: "Gemma", open: false, kinds: &[] },
];

/// Spellings that mean "no licence was given".
pub const UNLICENSED: &str = "unlicensed";

pub fn find(id: &str) -> Option<&'static License> {
    let id = id.trim();
    // HF ids drop "-only"/"-or-later" from the GPL family.
    let base = id.trim_end_matches("-only").trim_end_matches("-or-later");
    KNOWN.iter().find(|l| l.id.eq_ignore_ascii_case(id) || l.id.eq_ignore_ascii_case(base))
}

/// How tinylm reads SPDX expressions, with the `spdx` crate (the parser cargo-deny uses):
/// precedence (AND binds tighter than OR), parentheses, `WITH` exceptions, lower-case operators,
/// `+`. Ids the SPDX list lacks (the Hugging Face spellings `apache-2.0`, `llama2`, `openrail`)
/// parse as unknown terms, and `find` names them.
const MODE: spdx::ParseMode = spdx::ParseMode {
    allow_slash_as_or_operator: false,
    allow_imprecise_license_names: false,
    allow_postfix_plus_on_gpl: true,
    allow_deprecated: true,
    allow_unknown: true,
};

/// An expression in postfix order: each licence term as written (`ID`, `ID+`, `ID WITH EXC`),
/// and the operators joining them.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Id(String),
    And,
    Or,
}

fn nodes(expr: &str) -> Vec<Node> {
    let expr = expr.trim();
    match spdx::Expression::parse_mode(expr, MODE) {
        Ok(e) => e
            .iter()
            .map(|n| match n {
                spdx::expression::ExprNode::Op(spdx::expression::Operator::And) => Node::And,
                spdx::expression::ExprNode::Op(spdx::expression::Operator::Or) => Node::Or,
                spdx::expression::ExprNode::Req(r) => {
                    let mut text = expr
                        .get(r.span.start as usize..r.span.end as usize)
                        .unwrap_or(expr)
                        .trim()
                        .to_string();
                    let or_later = matches!(r.req.license, spdx::LicenseItem::Spdx { or_later: true, .. });
                    if or_later && !text.ends_with('+') && !text.to_ascii_lowercase().ends_with("-or-later") {
                        text.push('+');
                    }
                    let text = text.as_str();
                    // The span may or may not cover a `WITH` addition: take it from the parse.
                    let (base, _) = split_term(text);
                    if r.req.addition.is_none() || text.len() > base.len() + 1 {
                        return Node::Id(text.to_string());
                    }
                    // The addition as written: the word after `WITH` following the span.
                    let rest = expr.get(r.span.end as usize..).unwrap_or("").trim_start();
                    let rest = rest
                        .get(4..)
                        .filter(|_| rest.len() >= 4 && rest[..4].eq_ignore_ascii_case("with"))
                        .unwrap_or("");
                    let exc: String =
                        rest.trim_start().chars().take_while(|c| !c.is_whitespace() && *c != ')').collect();
                    match (exc.is_empty(), &r.req.addition) {
                        (false, _) => Node::Id(format!("{text} WITH {exc}")),
                        (true, Some(a)) => Node::Id(format!("{text} WITH {a}")),
                        (true, None) => Node::Id(text.to_string()),
                    }
                }
            })
            .collect(),
        // Not an expression (spaces in a name, stray characters): one opaque id, which no
        // licence matches.
        Err(_) => vec![Node::Id(expr.to_string())],
    }
}

/// An SPDX exception id, matched case-insensitively as SPDX matches identifiers.
fn exception(name: &str) -> Option<&'static str> {
    spdx::identifiers::EXCEPTIONS.iter().find(|e| e.name.eq_ignore_ascii_case(name)).map(|e| e.name)
}

/// A term's licence id (without `+`) and its `WITH` exception, if any.
fn split_term(term: &str) -> (&str, Option<&str>) {
    let (base, exc) = match term.to_ascii_lowercase().find(" with ") {
        Some(i) => (&term[..i], Some(term[i + 6..].trim())),
        None => (term, None),
    };
    (base.trim().trim_end_matches('+'), exc)
}

/// The licence ids of an expression, in order, each once (exceptions and `+` left off).
pub fn ids(expr: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in nodes(expr) {
        if let Node::Id(term) = n {
            let id = split_term(&term).0.to_string();
            if !out.contains(&id) {
                out.push(id);
            }
        }
    }
    out
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
    let base = |id: &str| {
        match find(id) {
            // An SPDX licence tinylm has no entry for, but which the OSI approves or the FSF
            // calls free: an open code licence.
            None if spdx::license_id(id).is_some_and(|l| l.is_osi_approved() || l.is_fsf_free_libre()) => {
                if kind == Kind::Code {
                    Verdict::Open
                } else {
                    Verdict::WrongKind(format!("{id} is a code licence; a {} component wants a {} licence", kind.name(), kind.name()))
                }
            }
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
        }
    };
    // An SPDX exception (LLVM-exception, Classpath-exception-2.0, ...) only grants more; any
    // other addition (Commons-Clause, an AdditionRef) may take rights away, so it is not open.
    let one = |term: &str| {
        match split_term(term) {
        (id, None) => base(id),
        (id, Some(exc)) if exception(exc).is_some() => base(id),
        (id, Some(exc)) => Verdict::NotOpen(format!(
            "{id} WITH {exc}: {exc} is not an SPDX licence exception, and an addition may restrict the licence"
        )),
    }
    };
    let rank = |v: &Verdict| match v {
        Verdict::Open => 0,
        Verdict::WrongKind(_) => 1,
        Verdict::NotOpen(_) => 2,
        Verdict::Unlicensed => 3,
    };
    // OR: the best alternative decides; AND: the worst part does.
    let mut stack: Vec<Verdict> = Vec::new();
    for n in nodes(expr) {
        match n {
            Node::Id(term) => stack.push(one(&term)),
            op => {
                let (Some(b), Some(a)) = (stack.pop(), stack.pop()) else { return Verdict::Unlicensed };
                let or = op == Node::Or;
                let better = if rank(&a) <= rank(&b) { (a, b) } else { (b, a) };
                stack.push(if or { better.0 } else { better.1 });
            }
        }
    }
    stack.pop().unwrap_or(Verdict::Unlicensed)
}

/// The known ids in an expression that have a shipped text, in order.
pub fn texts(expr: &str) -> Vec<&'static License> {
    ids(expr).iter().filter_map(|id| find(id)).filter(|l| l.text().is_some()).collect()
}

/// The expression with every id in its canonical spelling and upper-case operators,
/// parenthesised only where precedence needs it, or an error naming the first unknown id.
pub fn canonical(expr: &str) -> std::result::Result<String, String> {
    // (text, the operator at its top, if any)
    let mut stack: Vec<(String, Option<bool>)> = Vec::new();
    for n in nodes(expr) {
        match n {
            Node::Id(term) => {
                let (id, exc) = split_term(&term);
                let lower = term.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
                // "Or later" and "only" are part of what the licence says: kept.
                let suffix =
                    ["-or-later", "-only", "+"].into_iter().find(|s| lower.ends_with(s)).unwrap_or("");
                let name = match find(id) {
                    Some(l) => format!("{}{suffix}", l.id),
                    None if id.eq_ignore_ascii_case(UNLICENSED) => UNLICENSED.into(),
                    None => return Err(id.to_string()),
                };
                let name = match exc {
                    Some(e) => format!("{name} WITH {}", exception(e).unwrap_or(e)),
                    None => name,
                };
                stack.push((name, None));
            }
            op => {
                let or = op == Node::Or;
                let (Some(b), Some(a)) = (stack.pop(), stack.pop()) else { return Err(expr.to_string()) };
                // An OR inside an AND needs its parentheses; everything else reads the same
                // without.
                let side = |(t, top): (String, Option<bool>)| {
                    if !or && top == Some(true) {
                        format!("({t})")
                    } else {
                        t
                    }
                };
                stack.push((format!("{} {} {}", side(a), if or { "OR" } else { "AND" }, side(b)), Some(or)));
            }
        }
    }
    match (stack.pop(), stack.is_empty()) {
        (Some((t, _)), true) => Ok(t),
        _ => Err(expr.to_string()),
    }
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
        // C1 (review 2026-12-02): parentheses, lower-case operators, precedence, WITH.
        assert_eq!(judge("(MIT OR Apache-2.0)", Code), Verdict::Open);
        assert_eq!(canonical("(MIT OR Apache-2.0)").unwrap(), "MIT OR Apache-2.0");
        assert_eq!(canonical("MIT or Apache-2.0").unwrap(), "MIT OR Apache-2.0");
        assert_eq!(canonical("(mit OR apache-2.0) AND cc0-1.0").unwrap(), "(MIT OR Apache-2.0) AND CC0-1.0");
        assert_eq!(canonical("MIT OR Apache-2.0 AND CC0-1.0").unwrap(), "MIT OR Apache-2.0 AND CC0-1.0");
        // AND binds tighter: MIT alone satisfies this one.
        assert_eq!(judge("MIT OR CC-BY-NC-4.0 AND Apache-2.0", Code), Verdict::Open);
        assert!(matches!(judge("(MIT OR CC-BY-NC-4.0) AND CC-BY-NC-4.0", Code), Verdict::NotOpen(_)));
        assert_eq!(judge("Apache-2.0 WITH LLVM-exception", Code), Verdict::Open);
        // An OSI-approved licence tinylm has no entry for is an open code licence.
        assert_eq!(judge("Zlib", Code), Verdict::Open);
        assert!(matches!(judge("Zlib", Data), Verdict::WrongKind(_)));
        assert_eq!(ids("(MIT OR Apache-2.0) AND MIT"), vec!["MIT", "Apache-2.0"]);
        // An addition that is not an SPDX exception may restrict the licence; "or later" and
        // exceptions are kept in the canonical form.
        assert!(matches!(judge("Apache-2.0 WITH Commons-Clause", Code), Verdict::NotOpen(_)));
        assert_eq!(canonical("Apache-2.0 WITH Commons-Clause").unwrap(), "Apache-2.0 WITH Commons-Clause");
        assert_eq!(canonical("apache-2.0 with llvm-exception").unwrap(), "Apache-2.0 WITH LLVM-exception");
        assert_eq!(judge("Apache-2.0 WITH llvm-exception", Code), Verdict::Open);
        assert_eq!(canonical("GPL-3.0-or-later").unwrap(), "GPL-3.0-or-later");
        assert_eq!(canonical("Apache-2.0+").unwrap(), "Apache-2.0+");
        assert_eq!(judge("GPL-3.0-or-later", Code), Verdict::Open);
        assert_eq!(ids("Apache-2.0 WITH LLVM-exception OR MIT+"), vec!["Apache-2.0", "MIT"]);
    }

    #[test]
    fn shipped_texts_are_the_full_licences() {
        let has = |id: &str, needle: &str| {
            let t = find(id).and_then(|l| l.text()).unwrap_or_default();
            assert!(t.contains(needle), "{id} text lacks {needle:?}");
            t.len()
        };
        assert!(has("Apache-2.0", "END OF TERMS AND CONDITIONS") > 10_000);
        assert!(has("MIT", "THE SOFTWARE IS PROVIDED \"AS IS\"") > 1000);
        assert!(has("CC0-1.0", "Statement of Purpose") > 6000);
        assert!(has("CC-BY-4.0", "Attribution 4.0 International Public License") > 15_000);
        assert!(!find("CC-BY-4.0").and_then(|l| l.text()).unwrap_or_default().contains("ShareAlike"));
        // Every SPDX id tinylm knows has SPDX's own text; the HF-only ids have none.
        for l in KNOWN {
            let spdx = l.id.parse::<&dyn license::License>().ok().map(|x| x.text());
            assert_eq!(l.text(), spdx, "{}", l.id);
        }
        assert!(find("MIT").and_then(|l| l.text()).is_some_and(|t| t.contains("<copyright holders>")));
        assert!(find("llama2").and_then(|l| l.text()).is_none());
        assert!(
            has("CDLA-Permissive-2.0", "Community Data License Agreement - Permissive - Version 2.0") > 2000
        );
    }
}
