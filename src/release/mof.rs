//! The Model Openness Framework (MOF 1.0, LF AI & Data; arXiv 2403.13784): its 17 components,
//! the three cumulative classes, and the Model Openness Tool's YAML record (`mof.yml`).

use super::license::Kind;
use serde::{Deserialize, Serialize};

/// One MOF component: its exact name, the class that first requires it (or lists it as
/// optional), whether it is optional there, and the kind of licence it wants.
pub struct Component {
    pub name: &'static str,
    pub class: u8,
    pub optional: bool,
    pub kind: Kind,
}

const fn c(name: &'static str, class: u8, optional: bool, kind: Kind) -> Component {
    Component { name, class, optional, kind }
}

/// All 17, by class (III first, as the MOF paper lists them).
pub const COMPONENTS: &[Component] = &[
    c("Model architecture", 3, false, Kind::Code),
    c("Model parameters (Final)", 3, false, Kind::Data),
    c("Evaluation results", 3, false, Kind::Document),
    c("Model card", 3, false, Kind::Document),
    c("Data card", 3, false, Kind::Document),
    c("Technical report", 3, false, Kind::Document),
    c("Sample model outputs", 3, true, Kind::Document),
    c("Training code", 2, false, Kind::Code),
    c("Inference code", 2, false, Kind::Code),
    c("Evaluation code", 2, false, Kind::Code),
    c("Evaluation data", 2, false, Kind::Data),
    c("Supporting libraries and tools", 2, true, Kind::Code),
    c("Datasets", 1, false, Kind::Data),
    c("Data preprocessing code", 1, false, Kind::Code),
    c("Model parameters (Intermediate)", 1, false, Kind::Data),
    c("Research paper", 1, false, Kind::Document),
    c("Model metadata", 1, true, Kind::Data),
];

pub fn component(name: &str) -> Option<&'static Component> {
    COMPONENTS.iter().find(|c| c.name == name)
}

/// Weights (and their metadata: config, optimizer state) are data to the MOF, but the MOT also
/// accepts the code licences most releases use
/// (Apache-2.0, MIT): parameters take either kind without a warning.
pub fn accepts_code_licence(name: &str) -> bool {
    name.starts_with("Model parameters") || name == "Model metadata"
}

pub fn class_label(class: u8) -> &'static str {
    match class {
        1 => "Class I - Open Science",
        2 => "Class II - Open Tooling",
        3 => "Class III - Open Model",
        _ => "no class",
    }
}

/// The required components of one class alone (not cumulative).
pub fn required_in(class: u8) -> impl Iterator<Item = &'static Component> {
    COMPONENTS.iter().filter(move |c| c.class == class && !c.optional)
}

/// The best class met, given which components count: class k needs every required component
/// of classes k..=3 (classes are cumulative). 0 when not even Class III is met.
pub fn class_met(counts: &dyn Fn(&str) -> bool) -> u8 {
    let mut met = 0;
    for class in [3u8, 2, 1] {
        if required_in(class).all(|c| counts(c.name)) {
            met = class;
        } else {
            break;
        }
    }
    met
}

/// The MOT record. Field names and nesting follow the Model Openness Tool's YAML schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub framework: Framework,
    pub release: Release,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Framework {
    pub name: String,
    pub version: String,
    pub date: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub name: String,
    pub version: String,
    pub date: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub architecture: String,
    pub treatment: String,
    pub origin: String,
    pub producer: String,
    pub contact: String,
    pub license: ReleaseLicenses,
    pub components: Vec<RecordComponent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseLicenses {
    pub distribution: NamePath,
    pub code: NamePath,
    pub data: NamePath,
    pub document: NamePath,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamePath {
    pub name: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordComponent {
    pub name: String,
    pub description: String,
    pub license: String,
    pub license_path: String,
    pub component_path: String,
}

pub const FRAMEWORK_NAME: &str = "Model Openness Framework";
pub const FRAMEWORK_VERSION: &str = "1.0";
/// The date of MOF 1.0 (arXiv 2403.13784v1).
pub const FRAMEWORK_DATE: &str = "2024-03-20";

impl Record {
    /// Parse a `mof.yml`; every structural problem comes back as one message.
    pub fn parse(text: &str) -> std::result::Result<Record, String> {
        let r: Record = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        if r.framework.name != FRAMEWORK_NAME {
            problems.push(format!("framework.name is {:?}, want {FRAMEWORK_NAME:?}", r.framework.name));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &r.release.components {
            if component(&c.name).is_none() {
                problems.push(format!("component {:?} is not one of the 17 MOF component names", c.name));
            }
            if !seen.insert(c.name.as_str()) {
                problems.push(format!("component {:?} is listed twice", c.name));
            }
        }
        if problems.is_empty() {
            Ok(r)
        } else {
            Err(problems.join("; "))
        }
    }

    /// The record as YAML, every scalar a double-quoted string: the Model Openness Tool reads
    /// `mof.yml` with Symfony's YAML parser, which turns a bare `2024-03-20` into an integer
    /// timestamp and a bare `1.0` into a float, and its schema wants strings.
    pub fn to_yaml(&self) -> std::result::Result<String, String> {
        let v = serde_norway::to_value(self).map_err(|e| e.to_string())?;
        let mut out = String::new();
        write_yaml(&v, 0, &mut out);
        Ok(out)
    }
}

/// A YAML double-quoted scalar: serde_json's escaping (valid YAML), plus `\uXXXX` for what YAML
/// does not allow raw or reads back as something else: DEL and the C1 controls (NEL among
/// them), the line and paragraph separators and the byte-order mark.
fn yaml_quote(s: &str) -> String {
    let json = serde_json::to_string(s).unwrap_or_default();
    json.chars()
        .map(|c| match c as u32 {
            0x7f..=0x9f | 0x2028 | 0x2029 | 0xfeff => format!("\\u{:04x}", c as u32),
            _ => c.to_string(),
        })
        .collect()
}

/// Block YAML with double-quoted scalars.
fn write_yaml(v: &serde_norway::Value, indent: usize, out: &mut String) {
    use serde_norway::Value as V;
    let pad = " ".repeat(indent);
    let scalar = |v: &V| -> String {
        match v {
            V::String(s) => yaml_quote(s),
            V::Bool(b) => b.to_string(),
            V::Number(n) => serde_json::to_string(&n.to_string()).unwrap_or_default(),
            V::Null => "null".into(),
            _ => String::new(),
        }
    };
    match v {
        V::Mapping(m) => {
            for (k, val) in m {
                let key = k.as_str().map(String::from).unwrap_or_else(|| scalar(k));
                match val {
                    V::Mapping(x) if !x.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        write_yaml(val, indent + 2, out);
                    }
                    V::Sequence(x) if !x.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        write_yaml(val, indent, out);
                    }
                    V::Mapping(_) => out.push_str(&format!("{pad}{key}: {{}}\n")),
                    V::Sequence(_) => out.push_str(&format!("{pad}{key}: []\n")),
                    _ => out.push_str(&format!("{pad}{key}: {}\n", scalar(val))),
                }
            }
        }
        V::Sequence(items) => {
            for item in items {
                match item {
                    V::Mapping(m) if !m.is_empty() => {
                        // The first key on the dash line, the rest indented under it.
                        let mut inner = String::new();
                        write_yaml(item, indent + 2, &mut inner);
                        let body = inner.strip_prefix(&" ".repeat(indent + 2)).unwrap_or(&inner);
                        out.push_str(&format!("{pad}- {body}"));
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", scalar(item))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

/// The Model Openness Tool's JSON schema for `mof.yml`, from lfai/model_openness_tool at
/// 8b5d30e (`schema/mof_schema.json`), committed beside this file so the check needs no network.
pub const MOT_SCHEMA: &str = include_str!("mof_schema.json");

/// Where Symfony's YAML parser (the Tool's, without flags) and ours disagree on an unquoted
/// value: a date or timestamp, which Symfony reads as an integer (the schema wants a string)
/// and serde_norway as a string. Null, booleans and numbers parse alike in both, so the schema
/// check that follows judges them.
fn symfony_non_string(v: &str) -> Option<&'static str> {
    let digits =
        |s: &str, lo: usize, hi: usize| (lo..=hi).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let mut date = v.splitn(3, '-');
    let (Some(y), Some(m), Some(rest)) = (date.next(), date.next(), date.next()) else { return None };
    let d_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let after = &rest[d_end..];
    // A date alone, or a date and a time (`2024-03-20T10:00:00`, `2024-03-20 10:00:00`).
    let time = after.get(1..).unwrap_or("").trim_start();
    let hms: Vec<&str> = time.splitn(3, ':').collect();
    let time_ok = after.is_empty()
        || (after.starts_with(['T', 't', ' ', '\t'])
            && hms.len() == 3
            && digits(hms[0], 1, 2)
            && digits(hms[1], 2, 2)
            && hms[2].get(..2).is_some_and(|x| digits(x, 2, 2)));
    (digits(y, 4, 4) && digits(m, 1, 2) && digits(&rest[..d_end], 1, 2) && time_ok)
        .then_some("an integer timestamp")
}

/// Plain (unquoted, untagged) mapping values the Tool would not read as the strings its
/// schema wants, from the YAML parser's own events (saphyr-parser), so block scalars, quoted
/// strings and keys are told apart from plain values, in block and flow style alike.
fn plain_non_strings(text: &str) -> std::result::Result<Vec<String>, String> {
    use saphyr_parser::{Event, Parser, ScalarStyle};
    // Per open collection: (is a mapping, expects a key next).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let mut out = Vec::new();
    let mut key = String::new();
    for ev in Parser::new_from_str(text) {
        let (ev, span) = ev.map_err(|e| e.to_string())?;
        match ev {
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if let Some(top) = stack.last_mut().filter(|t| t.0) {
                    top.1 = true; // a collection as a value: a key comes next
                }
                stack.push((matches!(ev, Event::MappingStart(..)), true));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            Event::Scalar(v, style, _, tag) => {
                let in_map = stack.last().is_some_and(|t| t.0);
                let is_key = stack.last().is_some_and(|t| t.0 && t.1);
                if let Some(top) = stack.last_mut().filter(|t| t.0) {
                    top.1 = !top.1;
                }
                if is_key {
                    key = v.to_string();
                    continue;
                }
                if style == ScalarStyle::Plain && tag.is_none() {
                    if let Some(what) = symfony_non_string(&v) {
                        let name = if in_map { key.as_str() } else { "a list item" };
                        out.push(format!(
                            "line {}: {name} {v} is not quoted: the Model Openness Tool's YAML parser reads it as {what}, and its schema wants a string",
                            span.start.line()
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Check a `mof.yml` the way the Model Openness Tool reads it: problems, empty when valid.
/// - A plain (unquoted) scalar that Symfony's parser would read as a date or a number where
///   the schema wants a string is named: the Tool sees an integer timestamp there.
/// - The parsed document is validated against [`MOT_SCHEMA`] (formats included: `date`).
pub fn schema_problems(text: &str) -> Vec<String> {
    let mut problems = match plain_non_strings(text) {
        Ok(p) => p,
        Err(e) => return vec![format!("not YAML: {e}")],
    };
    let doc: serde_json::Value = match serde_norway::from_str::<serde_norway::Value>(text)
        .map_err(|e| e.to_string())
        .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("not YAML the schema can check: {e}"));
            return problems;
        }
    };
    let schema: serde_json::Value = match serde_json::from_str(MOT_SCHEMA) {
        Ok(s) => s,
        Err(e) => return vec![format!("internal: the embedded MOT schema does not parse: {e}")],
    };
    match jsonschema::options().should_validate_formats(true).build(&schema) {
        Ok(v) => {
            for e in v.iter_errors(&doc) {
                problems.push(format!("{} -> {e}", e.instance_path()));
            }
        }
        Err(e) => problems.push(format!("internal: the embedded MOT schema does not compile: {e}")),
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seventeen_components_and_cumulative_classes() {
        assert_eq!(COMPONENTS.len(), 17);
        assert_eq!(required_in(3).count(), 6);
        assert_eq!(required_in(2).count(), 4);
        assert_eq!(required_in(1).count(), 4);
        let all = |_: &str| true;
        assert_eq!(class_met(&all), 1);
        // Class I components without Class III ones meet nothing: classes are cumulative.
        let only_i = |n: &str| component(n).is_some_and(|c| c.class == 1);
        assert_eq!(class_met(&only_i), 0);
        let no_paper = |n: &str| n != "Research paper";
        assert_eq!(class_met(&no_paper), 2);
        let no_optional = |n: &str| component(n).is_some_and(|c| !c.optional);
        assert_eq!(class_met(&no_optional), 1);
    }

    #[test]
    fn unquoted_dates_and_numbers_are_found_by_the_parser_not_by_lines() {
        let y = "a:\n  date: 2024-03-20\n  at: 2024-03-20 10:00:00\n  note: |\n    date: 2024-01-01 in a block\n  ok: \"2024-03-20\"\n  flow: {date: 2024-03-20}\n  text: 2024-03-20 was a day\n  path: null\n";
        let p = plain_non_strings(y).unwrap();
        let lines: Vec<&str> = p.iter().map(|s| s.split(':').next().unwrap()).collect();
        // The block scalar, the quoted date, the sentence and null (which the schema allows in
        // places) are not flagged; the dates, timestamp and flow mapping's date are.
        assert_eq!(lines, vec!["line 2", "line 3", "line 7"], "{p:?}");
        assert!(p[0].contains("integer timestamp"), "{p:?}");
        // A number where a string belongs is left to the schema, which parses it alike.
        assert!(schema_problems("framework:\n  name: \"Model Openness Framework\"\n  version: 1.0\n  date: \"2024-03-20\"\nrelease:\n  name: \"x\"\n  license: {}\n  producer: \"p\"\n  components: []\n").iter().any(|e| e.contains("version")));
    }

    #[test]
    fn quoted_scalars_round_trip_every_character() {
        for s in [
            "a: b # c",
            "- x",
            "line\nbreak",
            "tab\there",
            "del\u{7f}nel\u{85}",
            "\u{2028}\u{feff}",
            "\"q\" \\",
        ] {
            let y = format!("k: {}\n", yaml_quote(s));
            let v: serde_norway::Value =
                serde_norway::from_str(&y).unwrap_or_else(|e| panic!("{s:?}: {e}\n{y}"));
            assert_eq!(v.get("k").and_then(|x| x.as_str()), Some(s), "{y}");
        }
    }

    #[test]
    fn record_round_trips_and_rejects_unknown_names() {
        let np = |n: &str| NamePath { name: n.into(), path: format!("LICENSES/{n}.txt") };
        let mut r = Record {
            framework: Framework {
                name: FRAMEWORK_NAME.into(),
                version: FRAMEWORK_VERSION.into(),
                date: FRAMEWORK_DATE.into(),
            },
            release: Release {
                name: "t".into(),
                version: "1".into(),
                date: "2026-01-01".into(),
                kind: "language".into(),
                architecture: "transformer decoder".into(),
                treatment: "pre-trained".into(),
                origin: "none".into(),
                producer: "tinylm".into(),
                contact: "".into(),
                license: ReleaseLicenses {
                    distribution: np("Apache-2.0"),
                    code: np("MIT"),
                    data: np("CC0-1.0"),
                    document: np("CC-BY-4.0"),
                },
                components: vec![RecordComponent {
                    name: "Model card".into(),
                    description: "d".into(),
                    license: "CC-BY-4.0".into(),
                    license_path: "LICENSES/CC-BY-4.0.txt".into(),
                    component_path: "README.md".into(),
                }],
            },
        };
        let y = r.to_yaml().unwrap();
        assert_eq!(Record::parse(&y).unwrap(), r);
        r.release.components[0].name = "Model Card".into();
        let e = Record::parse(&r.to_yaml().unwrap()).unwrap_err();
        assert!(e.contains("\"Model Card\" is not one of the 17"), "{e}");
        assert!(Record::parse("framework: [").is_err());
    }
}
