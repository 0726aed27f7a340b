//! Label and field selectors: parsing, printing and matching, as
//! `k8s.io/apimachinery/pkg/labels` and `k8s.io/apimachinery/pkg/fields` do.
//!
//! * [`LabelSelector::parse`] accepts the `?labelSelector=` syntax (`a=b`, `a==b`, `a!=b`,
//!   `a in (x,y)`, `a notin (x)`, `a`, `!a`, `a>1`, `a<1`), validates keys and values like
//!   Kubernetes and reports errors in Kubernetes' words
//!   (`unable to parse requirement: found '', expected: '('`). Printing gives Kubernetes'
//!   canonical form (requirements sorted by key, set values sorted).
//! * [`LabelSelector::from_metav1`] converts a `metav1.LabelSelector` (matchLabels +
//!   matchExpressions), as Deployments, ReplicaSets and Services carry.
//! * [`FieldSelector::parse`] accepts `?fieldSelector=` (`f=v`, `f==v`, `f!=v`, comma
//!   separated, `\,` `\=` `\\` escapes). [`object_fields`] gives the field labels a kind
//!   supports with their values for one object; [`FieldSelector::check_supported`] rejects
//!   unknown labels with `field label not supported: <label>`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::LazyLock;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use regex::Regex;
use serde_json::Value;

use crate::field::{FieldError, aggregate_message};

/// A selector that failed to parse or validate; the message is Kubernetes' wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

/// An operator of a label requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `a=b`
    Equals,
    /// `a==b`
    DoubleEquals,
    /// `a!=b`
    NotEquals,
    /// `a in (x,y)`
    In,
    /// `a notin (x,y)`
    NotIn,
    /// `a`
    Exists,
    /// `!a`
    DoesNotExist,
    /// `a>1`
    GreaterThan,
    /// `a<1`
    LessThan,
}

/// One requirement: a key, an operator and values (sorted, deduplicated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    op: Operator,
    values: Vec<String>,
}

impl Requirement {
    /// Builds and validates a requirement as Go's `labels.NewRequirement`.
    pub fn new(key: &str, op: Operator, values: Vec<String>) -> Result<Self, SelectorError> {
        let mut errs: Vec<FieldError> = Vec::new();
        if let Some(e) = validate_label_key(key, "key") {
            errs.push(e);
        }
        let vals_json = || Value::from(values.clone());
        match op {
            Operator::In | Operator::NotIn if values.is_empty() => {
                errs.push(FieldError::invalid(
                    "values",
                    vals_json(),
                    "for 'in', 'notin' operators, values set can't be empty",
                ));
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals
                if values.len() != 1 =>
            {
                errs.push(FieldError::invalid(
                    "values",
                    vals_json(),
                    "exact-match compatibility requires one single value",
                ));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                errs.push(FieldError::invalid(
                    "values",
                    vals_json(),
                    "values set must be empty for exists and does not exist",
                ));
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(FieldError::invalid(
                        "values",
                        vals_json(),
                        "for 'Gt', 'Lt' operators, exactly one value is required",
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(FieldError::invalid(
                            &format!("values[{i}]"),
                            Value::from(v.as_str()),
                            "for 'Gt', 'Lt' operators, the value must be an integer",
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, v) in values.iter().enumerate() {
            if let Some(e) = validate_label_value(v, &format!("values[{i}][{key}]")) {
                errs.push(e);
            }
        }
        if errs.is_empty() {
            let mut values = values;
            values.sort();
            values.dedup();
            Ok(Self {
                key: key.to_owned(),
                op,
                values,
            })
        } else {
            Err(SelectorError(aggregate_message(&errs)))
        }
    }

    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.op
    }

    /// The values, sorted.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether a label set satisfies this requirement.
    pub fn matches(&self, labels: &dyn Labels) -> bool {
        let has = |v: &str| self.values.iter().any(|x| x == v);
        match self.op {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                labels.get(&self.key).is_some_and(has)
            }
            Operator::NotIn | Operator::NotEquals => labels.get(&self.key).is_none_or(|v| !has(v)),
            Operator::Exists => labels.get(&self.key).is_some(),
            Operator::DoesNotExist => labels.get(&self.key).is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(actual), Some(bound)) = (
                    labels.get(&self.key).and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|v| v.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.op == Operator::GreaterThan {
                    actual > bound
                } else {
                    actual < bound
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.op == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.op {
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
        };
        f.write_str(op)?;
        let set = matches!(self.op, Operator::In | Operator::NotIn);
        if set {
            f.write_str("(")?;
        }
        f.write_str(&self.values.join(","))?;
        if set {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Anything labels can be looked up in.
pub trait Labels {
    /// The value of a label, if present.
    fn get(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        BTreeMap::get(self, key).map(String::as_str)
    }
}

impl Labels for std::collections::HashMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        std::collections::HashMap::get(self, key).map(String::as_str)
    }
}

/// A JSON object of string values (`metadata.labels`); `null` or a missing map has no labels.
impl Labels for Value {
    fn get(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }
}

/// A label selector: the AND of its requirements. `Nothing` matches no object (a nil
/// `metav1.LabelSelector`); an empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
    nothing: bool,
}

impl LabelSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// The selector that matches nothing.
    pub fn nothing() -> Self {
        Self {
            requirements: Vec::new(),
            nothing: true,
        }
    }

    /// Parses the `labelSelector` query syntax.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut requirements = Parser::new(s).parse()?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self {
            requirements,
            nothing: false,
        })
    }

    /// Converts a `metav1.LabelSelector` (Go's `metav1.LabelSelectorAsSelector`): `None`
    /// selects nothing, an empty one everything.
    pub fn from_metav1(sel: Option<&metav1::LabelSelector>) -> Result<Self, SelectorError> {
        let Some(sel) = sel else {
            return Ok(Self::nothing());
        };
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement::new(k, Operator::Equals, vec![v.clone()])?);
        }
        for expr in sel.match_expressions.iter().flatten() {
            let op = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError(format!(
                        "{} is not a valid label selector operator",
                        crate::field::go_quote(other)
                    )));
                }
            };
            requirements.push(Requirement::new(
                &expr.key,
                op,
                expr.values.clone().unwrap_or_default(),
            )?);
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self {
            requirements,
            nothing: false,
        })
    }

    /// Converts a `metav1.LabelSelector` given as JSON (e.g. `spec.selector` of a
    /// Deployment read from storage).
    pub fn from_metav1_json(sel: Option<&Value>) -> Result<Self, SelectorError> {
        match sel {
            None | Some(Value::Null) => Ok(Self::nothing()),
            Some(v) => {
                let typed: metav1::LabelSelector = serde_json::from_value(v.clone())
                    .map_err(|e| SelectorError(format!("invalid label selector: {e}")))?;
                Self::from_metav1(Some(&typed))
            }
        }
    }

    /// A selector matching exactly this set of labels (Go's `SelectorFromSet`, as
    /// Services and ReplicationControllers use); not validated.
    pub fn from_set<'a>(set: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        let mut requirements: Vec<Requirement> = set
            .into_iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                op: Operator::Equals,
                values: vec![v.clone()],
            })
            .collect();
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Self {
            requirements,
            nothing: false,
        }
    }

    /// The requirements, sorted by key.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether this selector restricts nothing.
    pub fn is_everything(&self) -> bool {
        !self.nothing && self.requirements.is_empty()
    }

    /// Whether a label set matches.
    pub fn matches(&self, labels: &dyn Labels) -> bool {
        !self.nothing && self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether an object's `metadata.labels` match.
    pub fn matches_object(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").unwrap_or(&Value::Null);
        self.matches(labels)
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

// ---------------------------------------------------------------- label syntax lexer/parser

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Error,
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn keyword(s: &str) -> Option<Tok> {
    Some(match s {
        ")" => Tok::ClosedPar,
        "," => Tok::Comma,
        "!" => Tok::DoesNotExist,
        "==" => Tok::DoubleEquals,
        "=" => Tok::Equals,
        ">" => Tok::GreaterThan,
        "in" => Tok::In,
        "<" => Tok::LessThan,
        "!=" => Tok::NotEquals,
        "notin" => Tok::NotIn,
        "(" => Tok::OpenPar,
        _ => return None,
    })
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn lex(s: &str) -> Vec<(Tok, String)> {
    let b = s.as_bytes();
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        while pos < b.len() && is_space(b[pos]) {
            pos += 1;
        }
        if pos >= b.len() {
            out.push((Tok::End, String::new()));
            return out;
        }
        if is_special(b[pos]) {
            // Longest special-symbol token, as Go's scanSpecialSymbol.
            let start = pos;
            let mut last: Option<(Tok, usize)> = None;
            while pos < b.len() && is_special(b[pos]) {
                pos += 1;
                if let Some(t) = keyword(&s[start..pos]) {
                    last = Some((t, pos));
                } else if last.is_some() {
                    break;
                }
            }
            match last {
                Some((t, end)) => {
                    pos = end;
                    out.push((t, s[start..end].to_owned()));
                }
                None => out.push((
                    Tok::Error,
                    format!("error expected: keyword found '{}'", &s[start..pos]),
                )),
            }
        } else {
            let start = pos;
            while pos < b.len() && !is_special(b[pos]) && !is_space(b[pos]) {
                pos += 1;
            }
            let lit = &s[start..pos];
            let tok = match keyword(lit) {
                Some(t @ (Tok::In | Tok::NotIn)) => t,
                _ => Tok::Identifier,
            };
            out.push((tok, lit.to_owned()));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    KeyAndOperator,
    Values,
}

struct Parser {
    items: Vec<(Tok, String)>,
    pos: usize,
}

impl Parser {
    fn new(s: &str) -> Self {
        Self {
            items: lex(s),
            pos: 0,
        }
    }

    fn at(&self, i: usize, ctx: Ctx) -> (Tok, String) {
        let (t, l) = self
            .items
            .get(i)
            .cloned()
            .unwrap_or((Tok::End, String::new()));
        let t = match (ctx, t) {
            (Ctx::Values, Tok::In | Tok::NotIn) => Tok::Identifier,
            (_, t) => t,
        };
        (t, l)
    }

    fn lookahead(&self, ctx: Ctx) -> (Tok, String) {
        self.at(self.pos, ctx)
    }

    fn consume(&mut self, ctx: Ctx) -> (Tok, String) {
        let r = self.at(self.pos, ctx);
        self.pos += 1;
        r
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut reqs = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(Ctx::Values);
            match tok {
                Tok::Identifier | Tok::DoesNotExist => {
                    let r = self.parse_requirement().map_err(|e| {
                        SelectorError(format!("unable to parse requirement: {}", e.0))
                    })?;
                    reqs.push(r);
                    let (t, l) = self.consume(Ctx::Values);
                    match t {
                        Tok::End => return Ok(reqs),
                        Tok::Comma => {
                            let (t2, l2) = self.lookahead(Ctx::Values);
                            if t2 != Tok::Identifier && t2 != Tok::DoesNotExist {
                                return Err(SelectorError(format!(
                                    "found '{l2}', expected: identifier after ','"
                                )));
                            }
                        }
                        _ => {
                            return Err(SelectorError(format!(
                                "found '{l}', expected: ',' or 'end of string'"
                            )));
                        }
                    }
                }
                Tok::End => return Ok(reqs),
                _ => {
                    return Err(SelectorError(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    )));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (key, op) = self.parse_key_and_infer_operator()?;
        if let Some(op @ (Operator::Exists | Operator::DoesNotExist)) = op {
            return Requirement::new(&key, op, Vec::new());
        }
        let op = self.parse_operator()?;
        let values = match op {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(&key, op, values)
    }

    fn parse_key_and_infer_operator(
        &mut self,
    ) -> Result<(String, Option<Operator>), SelectorError> {
        let mut op = None;
        let (mut tok, mut lit) = self.consume(Ctx::Values);
        if tok == Tok::DoesNotExist {
            op = Some(Operator::DoesNotExist);
            (tok, lit) = self.consume(Ctx::Values);
        }
        if tok != Tok::Identifier {
            return Err(SelectorError(format!(
                "found '{lit}', expected: identifier"
            )));
        }
        if let Some(e) = validate_label_key(&lit, "<nil>") {
            return Err(SelectorError(e.to_string()));
        }
        let (t, _) = self.lookahead(Ctx::Values);
        if (t == Tok::End || t == Tok::Comma) && op.is_none() {
            op = Some(Operator::Exists);
        }
        Ok((lit, op))
    }

    fn parse_operator(&mut self) -> Result<Operator, SelectorError> {
        let (tok, lit) = self.consume(Ctx::KeyAndOperator);
        Ok(match tok {
            Tok::In => Operator::In,
            Tok::Equals => Operator::Equals,
            Tok::DoubleEquals => Operator::DoubleEquals,
            Tok::GreaterThan => Operator::GreaterThan,
            Tok::LessThan => Operator::LessThan,
            Tok::NotIn => Operator::NotIn,
            Tok::NotEquals => Operator::NotEquals,
            _ => {
                return Err(SelectorError(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                )));
            }
        })
    }

    fn parse_values(&mut self) -> Result<Vec<String>, SelectorError> {
        let (tok, lit) = self.consume(Ctx::Values);
        if tok != Tok::OpenPar {
            return Err(SelectorError(format!("found '{lit}' expected: '('")));
        }
        let (tok, lit) = self.lookahead(Ctx::Values);
        match tok {
            Tok::Identifier | Tok::Comma => {
                let s = self.parse_identifiers_list()?;
                let (t, _) = self.consume(Ctx::Values);
                if t != Tok::ClosedPar {
                    return Err(SelectorError(format!("found '{lit}', expected: ')'")));
                }
                Ok(s)
            }
            Tok::ClosedPar => {
                self.consume(Ctx::Values);
                Ok(vec![String::new()])
            }
            _ => Err(SelectorError(format!(
                "found '{lit}', expected: ',', ')' or identifier"
            ))),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, SelectorError> {
        let mut s: Vec<String> = Vec::new();
        let insert = |s: &mut Vec<String>, v: &str| {
            if !s.iter().any(|x| x == v) {
                s.push(v.to_owned());
            }
        };
        loop {
            let (tok, lit) = self.consume(Ctx::Values);
            match tok {
                Tok::Identifier => {
                    insert(&mut s, &lit);
                    let (t2, l2) = self.lookahead(Ctx::Values);
                    match t2 {
                        Tok::Comma => continue,
                        Tok::ClosedPar => return Ok(s),
                        _ => {
                            return Err(SelectorError(format!(
                                "found '{l2}', expected: ',' or ')'"
                            )));
                        }
                    }
                }
                Tok::Comma => {
                    if s.is_empty() {
                        insert(&mut s, "");
                    }
                    let (t2, _) = self.lookahead(Ctx::Values);
                    if t2 == Tok::ClosedPar {
                        insert(&mut s, "");
                        return Ok(s);
                    }
                    if t2 == Tok::Comma {
                        insert(&mut s, "");
                    }
                }
                _ => {
                    return Err(SelectorError(format!(
                        "found '{lit}', expected: ',', or identifier"
                    )));
                }
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<Vec<String>, SelectorError> {
        let (tok, _) = self.lookahead(Ctx::Values);
        if tok == Tok::End || tok == Tok::Comma {
            return Ok(vec![String::new()]);
        }
        let (tok, lit) = self.consume(Ctx::Values);
        if tok == Tok::Identifier {
            Ok(vec![lit])
        } else {
            Err(SelectorError(format!(
                "found '{lit}', expected: identifier"
            )))
        }
    }
}

// ---------------------------------------------------------------- name validation

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

static QUALIFIED_NAME_RE: LazyLock<Regex> = LazyLock::new(|| anchored(QUALIFIED_NAME_FMT));
static DNS1123_SUBDOMAIN_RE: LazyLock<Regex> = LazyLock::new(|| anchored(DNS1123_SUBDOMAIN_FMT));
static LABEL_VALUE_RE: LazyLock<Regex> =
    LazyLock::new(|| anchored(&format!("({QUALIFIED_NAME_FMT})?")));

fn anchored(fmt: &str) -> Regex {
    Regex::new(&format!("^(?:{fmt})$")).expect("built-in regex is valid")
}

/// Go's `validation.RegexError`.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut s = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push_str(&format!("'{e}', "));
    }
    s.push_str(&format!("regex used for validation is '{fmt}')"));
    s
}

/// Go's `validation.IsDNS1123Subdomain`: the problems with a DNS subdomain name.
pub fn dns1123_subdomain_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push("must be no more than 253 characters".to_owned());
    }
    if !DNS1123_SUBDOMAIN_RE.is_match(value) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// Go's `validation.IsQualifiedName`: the problems with a label key / qualified name.
pub fn qualified_name_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                errs.extend(
                    dns1123_subdomain_errors(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            name
        }
        _ => {
            return vec![format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_MSG,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            )];
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_owned());
    }
    if !QUALIFIED_NAME_RE.is_match(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// Go's `validation.IsValidLabelValue`.
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_owned());
    }
    if !LABEL_VALUE_RE.is_match(value) {
        errs.push(regex_error(
            LABEL_VALUE_MSG,
            &format!("({QUALIFIED_NAME_FMT})?"),
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

fn validate_label_key(key: &str, path: &str) -> Option<FieldError> {
    let errs = qualified_name_errors(key);
    (!errs.is_empty()).then(|| FieldError::invalid(path, Value::from(key), &errs.join("; ")))
}

fn validate_label_value(value: &str, path: &str) -> Option<FieldError> {
    let errs = label_value_errors(value);
    (!errs.is_empty()).then(|| FieldError::invalid(path, Value::from(value), &errs.join("; ")))
}

// ---------------------------------------------------------------- field selectors

/// One field requirement: `field=value` or `field!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// The field label, e.g. `metadata.name`.
    pub field: String,
    /// `true` for `!=`.
    pub negated: bool,
    /// The unescaped value.
    pub value: String,
}

/// A field selector: the AND of its requirements.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses the `fieldSelector` query syntax (Go's `fields.ParseSelector`).
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut parts = split_terms(s);
        parts.sort();
        let mut requirements = Vec::new();
        for part in parts.iter().filter(|p| !p.is_empty()) {
            let Some((lhs, op, rhs)) = split_term(part) else {
                return Err(SelectorError(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let value = unescape_value(rhs)?;
            requirements.push(FieldRequirement {
                field: lhs.to_owned(),
                negated: op == "!=",
                value,
            });
        }
        Ok(Self { requirements })
    }

    /// The requirements, sorted by their source text.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// Whether this selector restricts nothing.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Rejects labels the kind does not support: `field label not supported: <label>`
    /// (the apiserver answers 400 BadRequest with this message).
    pub fn check_supported(&self, supported: &dyn Fn(&str) -> bool) -> Result<(), SelectorError> {
        match self.requirements.iter().find(|r| !supported(&r.field)) {
            Some(r) => Err(SelectorError(format!(
                "field label not supported: {}",
                r.field
            ))),
            None => Ok(()),
        }
    }

    /// Whether a field set (label → value) matches. A field absent from the set never
    /// equals a value and always differs from one.
    pub fn matches(&self, fields: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            let v = fields.get(&r.field);
            if r.negated {
                v != Some(&r.value)
            } else {
                v == Some(&r.value)
            }
        })
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| {
                format!(
                    "{}{}{}",
                    r.field,
                    if r.negated { "!=" } else { "=" },
                    escape_value(&r.value)
                )
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn split_terms(s: &str) -> Vec<String> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            cur.push(c);
            escaped = true;
        } else if c == ',' {
            terms.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    terms.push(cur);
    terms
}

/// Splits `lhs<op>rhs` at the first unescaped operator (`!=`, `==`, `=`).
fn split_term(term: &str) -> Option<(&str, &str, &str)> {
    let b = term.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
            continue;
        }
        for op in ["!=", "==", "="] {
            if term[i..].starts_with(op) {
                return Some((&term[..i], op, &term[i + op.len()..]));
            }
        }
        i += 1;
    }
    None
}

fn unescape_value(s: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(e) => {
                    return Err(SelectorError(format!(
                        "invalid field selector: invalid escape sequence: \\{e}"
                    )));
                }
                None => {
                    return Err(SelectorError(
                        "invalid field selector: invalid escape sequence: \\".to_owned(),
                    ));
                }
            },
            ',' | '=' => {
                return Err(SelectorError(format!(
                    "invalid field selector: unescaped character in value: {c}"
                )));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn escape_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace('=', "\\=")
}

/// The field labels an object supports for field selectors, with their values — Go's
/// per-kind `GetAttrs`/`ToSelectableFields`. `group`/`kind` pick the kind-specific set;
/// `selectable` adds a CRD version's `selectableFields` (`.spec.color` style JSON paths).
/// Every kind has `metadata.name` and, when namespaced, `metadata.namespace`.
pub fn object_fields(
    group: &str,
    kind: &str,
    obj: &Value,
    selectable: &[String],
) -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    let s = |p: &str| obj.pointer(p).map(scalar_text).unwrap_or_default();
    f.insert("metadata.name".to_owned(), s("/metadata/name"));
    f.insert("metadata.namespace".to_owned(), s("/metadata/namespace"));
    let mut put = |label: &str, pointer: &str| {
        f.insert(label.to_owned(), s(pointer));
    };
    match (group, kind) {
        ("", "Pod") => {
            put("spec.nodeName", "/spec/nodeName");
            put("spec.restartPolicy", "/spec/restartPolicy");
            put("spec.schedulerName", "/spec/schedulerName");
            put("spec.serviceAccountName", "/spec/serviceAccountName");
            put("status.phase", "/status/phase");
            put("status.podIP", "/status/podIP");
            put("status.nominatedNodeName", "/status/nominatedNodeName");
            let host_network = obj
                .pointer("/spec/hostNetwork")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            f.insert("spec.hostNetwork".to_owned(), host_network.to_string());
        }
        ("", "Event") | ("events.k8s.io", "Event") => {
            // Core events reference their object as `involvedObject`, events.k8s.io ones as
            // `regarding`; both spellings of the label are accepted for either.
            let obj_ref = if group.is_empty() {
                "involvedObject"
            } else {
                "regarding"
            };
            for sub in [
                "kind",
                "namespace",
                "name",
                "uid",
                "apiVersion",
                "resourceVersion",
                "fieldPath",
            ] {
                put(
                    &format!("involvedObject.{sub}"),
                    &format!("/{obj_ref}/{sub}"),
                );
                put(&format!("regarding.{sub}"), &format!("/{obj_ref}/{sub}"));
            }
            put("reason", "/reason");
            put("type", "/type");
            if group.is_empty() {
                put("reportingComponent", "/reportingComponent");
                put("source", "/source/component");
            } else {
                put("reportingController", "/reportingController");
                put("reportingComponent", "/reportingController");
            }
        }
        ("", "Secret") => put("type", "/type"),
        ("", "Namespace") => put("status.phase", "/status/phase"),
        ("", "Node") => {
            let u = obj
                .pointer("/spec/unschedulable")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            f.insert("spec.unschedulable".to_owned(), u.to_string());
        }
        ("", "Service") => {
            put("spec.clusterIP", "/spec/clusterIP");
            put("spec.type", "/spec/type");
        }
        ("", "ReplicationController") | ("apps", "ReplicaSet") => {
            let r = obj
                .pointer("/status/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            f.insert("status.replicas".to_owned(), r.to_string());
        }
        ("batch", "Job") => {
            let r = obj
                .pointer("/status/succeeded")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            f.insert("status.successful".to_owned(), r.to_string());
        }
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            put("spec.signerName", "/spec/signerName")
        }
        _ => {}
    }
    for path in selectable {
        let label = path.trim_start_matches('.');
        let pointer = format!("/{}", label.replace('.', "/"));
        f.insert(label.to_owned(), s(&pointer));
    }
    f
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_and_prints_canonically() {
        // Cases from labels/selector_test.go TestSelectorParse.
        for (input, want) in [
            ("", ""),
            ("x=a", "x=a"),
            ("y=b,x=a", "x=a,y=b"),
            ("x=a,y!=b", "x=a,y!=b"),
            ("x==", "x=="),
            ("x in (b,a)", "x in (a,b)"),
            ("x notin (a)", "x notin (a)"),
            ("x in ()", "x in ()"),
            ("!x", "!x"),
            ("x,!y", "x,!y"),
            ("!y,x", "x,!y"),
            ("x>1", "x>1"),
            ("y>5,x<1", "x<1,y>5"),
            (
                "x in (foo,,baz),y,z notin ()",
                "x in (,baz,foo),y,z notin ()",
            ),
            (" x = a ", "x=a"),
            ("x=", "x="),
            ("x= ", "x="),
            ("x=,z= ", "x=,z="),
            ("x in (in)", "x in (in)"),
        ] {
            let sel = LabelSelector::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(sel.to_string(), want, "input {input:?}");
        }
    }

    #[test]
    fn rejects_with_kubernetes_messages() {
        for (input, want) in [
            (
                "x in",
                "unable to parse requirement: found '' expected: '('",
            ),
            (
                "x in (a",
                "unable to parse requirement: found '', expected: ',' or ')'",
            ),
            ("x=a,", "found '', expected: identifier after ','"),
            ("x=a y=b", "found 'y', expected: ',' or 'end of string'"),
            (
                "=a",
                "found '=', expected: !, identifier, or 'end of string'",
            ),
            (
                "x (a)",
                "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt",
            ),
            (
                "x>a",
                "unable to parse requirement: values[0]: Invalid value: \"a\": for 'Gt', 'Lt' operators, the value must be an integer",
            ),
            (
                "x!a",
                "unable to parse requirement: found '!', expected: in, notin, =, ==, !=, gt, lt",
            ),
        ] {
            let err = LabelSelector::parse(input).expect_err(input);
            assert_eq!(err.0, want, "input {input:?}");
        }
    }

    #[test]
    fn invalid_key_and_value_messages() {
        let err = LabelSelector::parse("-x=a").expect_err("bad key");
        assert_eq!(
            err.0,
            "unable to parse requirement: <nil>: Invalid value: \"-x\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        );
        let err = LabelSelector::parse("x=-a").expect_err("bad value");
        assert_eq!(
            err.0,
            "unable to parse requirement: values[0][x]: Invalid value: \"-a\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        );
        assert!(LabelSelector::parse("example.com/app=web").is_ok());
        let err = LabelSelector::parse("Example.com/app").expect_err("uppercase prefix");
        assert!(
            err.0.contains("prefix part a lowercase RFC 1123 subdomain"),
            "{}",
            err.0
        );
        assert!(
            LabelSelector::parse(&format!("{}=a", "k".repeat(64)))
                .expect_err("long")
                .0
                .contains("name part must be no more than 63 characters")
        );
    }

    #[test]
    fn matching_follows_kubernetes_semantics() {
        let ls = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        let m = |s: &str| LabelSelector::parse(s).expect("parses").matches(&ls);
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app=db"));
        assert!(m("app!=db"));
        assert!(m("missing!=x"), "!= matches when the label is absent");
        assert!(m("app in (db,web)"));
        assert!(!m("app notin (web)"));
        assert!(m("missing notin (web)"));
        assert!(!m("missing in (web)"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("n>4"));
        assert!(!m("n>5"));
        assert!(m("n<6"));
        assert!(!m("app>1"), "non-integer label never satisfies > or <");
        assert!(!m("missing<1"));
    }

    #[test]
    fn metav1_label_selector() {
        let sel: metav1::LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .expect("valid");
        let s = LabelSelector::from_metav1(Some(&sel)).expect("converts");
        assert_eq!(s.to_string(), "app=web,!canary,tier in (edge,front)");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "edge")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("tier", "edge"),
            ("canary", "1")
        ])));
        assert!(
            !LabelSelector::from_metav1(None)
                .expect("nil")
                .matches(&labels(&[])),
            "nil selects nothing"
        );
        let empty =
            LabelSelector::from_metav1(Some(&metav1::LabelSelector::default())).expect("empty");
        assert!(
            empty.matches(&labels(&[("a", "b")])),
            "empty selects everything"
        );
        let bad: metav1::LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}),
        )
        .expect("json");
        assert_eq!(
            LabelSelector::from_metav1(Some(&bad)).expect_err("op").0,
            "\"Gt\" is not a valid label selector operator"
        );
        let no_values: metav1::LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "a", "operator": "In"}]}))
                .expect("json");
        assert!(
            LabelSelector::from_metav1(Some(&no_values))
                .expect_err("empty in")
                .0
                .contains("values set can't be empty")
        );
        let from_json =
            LabelSelector::from_metav1_json(Some(&json!({"matchLabels": {"app": "web"}})))
                .expect("json");
        assert!(from_json.matches_object(&json!({"metadata": {"labels": {"app": "web"}}})));
        assert!(!from_json.matches_object(&json!({"metadata": {}})));
    }

    #[test]
    fn field_selector_parse_match_and_support() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let fields = object_fields("", "Pod", &pod, &[]);
        let m = |s: &str| FieldSelector::parse(s).expect("parses").matches(&fields);
        assert!(m("metadata.name=p"));
        assert!(m("metadata.name==p,status.phase=Running"));
        assert!(!m("status.phase!=Running"));
        assert!(m("spec.nodeName!=n2"));
        assert!(m("spec.hostNetwork=false"));
        assert!(m(""));
        let sel = FieldSelector::parse("spec.foo=x").expect("parses");
        let err = sel
            .check_supported(&|f| fields.contains_key(f))
            .expect_err("unsupported");
        assert_eq!(err.0, "field label not supported: spec.foo");
        assert_eq!(
            FieldSelector::parse("a").expect_err("no op").0,
            "invalid selector: 'a'; can't understand 'a'"
        );
        let esc = FieldSelector::parse("metadata.name=a\\,b").expect("escaped comma");
        assert_eq!(esc.requirements()[0].value, "a,b");
        assert_eq!(esc.to_string(), "metadata.name=a\\,b");
        assert!(
            FieldSelector::parse("metadata.name=a\\x")
                .expect_err("bad escape")
                .0
                .contains("invalid escape sequence")
        );
    }

    #[test]
    fn event_and_crd_fields() {
        let ev = json!({"metadata": {"name": "e", "namespace": "ns"}, "involvedObject": {"kind": "Pod", "name": "p", "uid": "u"}, "reason": "Started", "type": "Normal", "source": {"component": "kubelet"}});
        let f = object_fields("", "Event", &ev, &[]);
        assert_eq!(f["involvedObject.kind"], "Pod");
        assert_eq!(f["involvedObject.name"], "p");
        assert_eq!(f["source"], "kubelet");
        let cr = json!({"metadata": {"name": "w"}, "spec": {"replicas": 3, "color": "blue"}});
        let f = object_fields(
            "cellmesh.io",
            "WorkModel",
            &cr,
            &[".spec.color".into(), ".spec.replicas".into()],
        );
        assert_eq!(f["spec.color"], "blue");
        assert_eq!(f["spec.replicas"], "3");
        assert_eq!(f["metadata.namespace"], "");
    }

    fn arb_key() -> impl Strategy<Value = String> {
        "([a-z]([a-z0-9-]{0,4}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,4}[a-z0-9])?)?/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,8}[A-Za-z0-9])?"
    }

    fn arb_value() -> impl Strategy<Value = String> {
        "([A-Za-z0-9]([A-Za-z0-9_.-]{0,6}[A-Za-z0-9])?)?"
    }

    fn arb_requirement() -> impl Strategy<Value = (String, u8, Vec<String>)> {
        (arb_key(), 0u8..7, prop::collection::vec(arb_value(), 1..4))
    }

    proptest! {
        #[test]
        fn print_then_parse_is_identity(reqs in prop::collection::vec(arb_requirement(), 0..5)) {
            let mut parts = Vec::new();
            for (key, op, values) in &reqs {
                let op = [Operator::Equals, Operator::DoubleEquals, Operator::NotEquals, Operator::In, Operator::NotIn, Operator::Exists, Operator::DoesNotExist][usize::from(*op)];
                let values = match op {
                    Operator::In | Operator::NotIn => values.clone(),
                    Operator::Exists | Operator::DoesNotExist => vec![],
                    _ => vec![values[0].clone()],
                };
                let r = Requirement::new(key, op, values);
                prop_assert!(r.is_ok(), "{:?}", r);
                if let Ok(r) = r { parts.push(r.to_string()); }
            }
            let text = parts.join(",");
            let sel = LabelSelector::parse(&text);
            prop_assert!(sel.is_ok(), "{} -> {:?}", text, sel);
            if let Ok(sel) = sel {
                let printed = sel.to_string();
                let again = LabelSelector::parse(&printed);
                prop_assert_eq!(again.map(|s| s.to_string()), Ok(printed));
            }
        }

        #[test]
        fn field_selector_round_trips(values in prop::collection::vec("[a-z,=\\\\]{0,6}", 1..4)) {
            let text: Vec<String> = values.iter().enumerate().map(|(i, v)| format!("f{i}={}", escape_value(v))).collect();
            let sel = FieldSelector::parse(&text.join(","));
            prop_assert!(sel.is_ok());
            if let Ok(sel) = sel {
                let fields: BTreeMap<String, String> = values.iter().enumerate().map(|(i, v)| (format!("f{i}"), v.clone())).collect();
                prop_assert!(sel.matches(&fields));
                prop_assert_eq!(FieldSelector::parse(&sel.to_string()), Ok(sel));
            }
        }
    }
}
