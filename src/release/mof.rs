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

/// Check a `mof.yml` the way the Model Openness Tool reads it: problems, empty when valid.
/// - A plain (unquoted) scalar that Symfony's parser would read as a date or a number where
///   the schema wants a string is named: the Tool sees an integer timestamp there.
/// - The parsed document is validated against [`MOT_SCHEMA`] (formats included: `date`).
pub fn schema_problems(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim_start().trim_start_matches("- ");
        if let Some((key, val)) = l.split_once(": ") {
            let val = val.split(" #").next().unwrap_or("").trim();
            let b = val.as_bytes();
            let date_like = b.len() >= 10
                && b[..4].iter().all(u8::is_ascii_digit)
                && b[4] == b'-'
                && b[5..7].iter().all(u8::is_ascii_digit)
                && b[7] == b'-'
                && b[8..10].iter().all(u8::is_ascii_digit);
            let number_like = !val.is_empty() && val.parse::<f64>().is_ok();
            if date_like || (number_like && matches!(key.trim(), "version" | "date" | "name")) {
                problems.push(format!(
                    "line {}: {} {val} is not quoted: the Model Openness Tool's YAML parser reads it as {}, and its schema wants a string",
                    i + 1,
                    key.trim(),
                    if date_like { "an integer timestamp" } else { "a number" }
                ));
            }
        }
    }
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
