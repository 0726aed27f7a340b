//! Field-level validation errors, worded exactly as Kubernetes' `field.Error`
//! (`k8s.io/apimachinery/pkg/util/validation/field`).
//!
//! A [`FieldError`] prints as `<path>: <Type text>[: <bad value>][: <detail>]`, e.g.
//! `spec.replicas: Invalid value: -1: must be greater than or equal to 0`. Bad values are
//! printed as Go prints them: numbers and booleans plainly, strings quoted (`%q`), objects
//! and lists the way Go's `%#v` prints unstructured JSON. [`aggregate_message`] joins a
//! list as Go's `utilerrors.Aggregate` does (one message alone, several as `[a, b]`,
//! duplicates dropped).

use std::fmt;

use serde_json::Value;

/// The machine-readable kind of a field error; the `reason` of a `StatusCause`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// `FieldValueNotFound` — "Not found".
    NotFound,
    /// `FieldValueRequired` — "Required value".
    Required,
    /// `FieldValueDuplicate` — "Duplicate value".
    Duplicate,
    /// `FieldValueInvalid` — "Invalid value".
    Invalid,
    /// `FieldValueNotSupported` — "Unsupported value".
    NotSupported,
    /// `FieldValueForbidden` — "Forbidden".
    Forbidden,
    /// `FieldValueTooLong` — "Too long".
    TooLong,
    /// `FieldValueTooMany` — "Too many".
    TooMany,
    /// `InternalError` — "Internal error".
    Internal,
    /// `FieldValueTypeInvalid` — "Invalid value" (the value does not have the schema's type).
    TypeInvalid,
}

impl ErrorType {
    /// The `StatusCause.reason` string (`FieldValueInvalid`, …).
    pub fn cause_type(self) -> &'static str {
        match self {
            Self::NotFound => "FieldValueNotFound",
            Self::Required => "FieldValueRequired",
            Self::Duplicate => "FieldValueDuplicate",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
            Self::Internal => "InternalError",
            Self::TypeInvalid => "FieldValueTypeInvalid",
        }
    }

    /// The human text that starts the error body (`Invalid value`, `Required value`, …).
    pub fn text(self) -> &'static str {
        match self {
            Self::NotFound => "Not found",
            Self::Required => "Required value",
            Self::Duplicate => "Duplicate value",
            Self::Invalid | Self::TypeInvalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
            Self::Internal => "Internal error",
        }
    }

    /// Parses a `StatusCause.reason` / CEL rule `reason` string.
    pub fn from_cause_type(s: &str) -> Option<Self> {
        [
            Self::NotFound,
            Self::Required,
            Self::Duplicate,
            Self::Invalid,
            Self::NotSupported,
            Self::Forbidden,
            Self::TooLong,
            Self::TooMany,
            Self::Internal,
            Self::TypeInvalid,
        ]
        .into_iter()
        .find(|t| t.cause_type() == s)
    }
}

/// One field-level validation error.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// What went wrong.
    pub kind: ErrorType,
    /// The field path, e.g. `spec.services[s0].seqLen` or `metadata.name`.
    pub field: String,
    /// The offending value; `None` omits it from the message.
    pub bad_value: Option<Value>,
    /// Extra explanation appended after the value.
    pub detail: String,
}

impl FieldError {
    fn new(kind: ErrorType, field: &str, bad_value: Option<Value>, detail: &str) -> Self {
        Self {
            kind,
            field: field.to_owned(),
            bad_value,
            detail: detail.to_owned(),
        }
    }

    /// `Invalid value: <value>: <detail>`.
    pub fn invalid(field: &str, value: Value, detail: &str) -> Self {
        Self::new(ErrorType::Invalid, field, Some(value), detail)
    }

    /// `Invalid value: <value>: <detail>` with reason `FieldValueTypeInvalid`.
    pub fn type_invalid(field: &str, value: Value, detail: &str) -> Self {
        Self::new(ErrorType::TypeInvalid, field, Some(value), detail)
    }

    /// `Required value[: <detail>]`.
    pub fn required(field: &str, detail: &str) -> Self {
        Self::new(ErrorType::Required, field, None, detail)
    }

    /// `Forbidden[: <detail>]`.
    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self::new(ErrorType::Forbidden, field, None, detail)
    }

    /// `Duplicate value: <value>`.
    pub fn duplicate(field: &str, value: Value) -> Self {
        Self::new(ErrorType::Duplicate, field, Some(value), "")
    }

    /// `Not found: <value>`.
    pub fn not_found(field: &str, value: Value) -> Self {
        Self::new(ErrorType::NotFound, field, Some(value), "")
    }

    /// `Unsupported value: <value>: supported values: "a", "b"`.
    pub fn not_supported(field: &str, value: Value, valid: &[String]) -> Self {
        let detail = if valid.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = valid.iter().map(|v| go_quote(v)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new(ErrorType::NotSupported, field, Some(value), &detail)
    }

    /// `Too long: may not be more than <max> bytes` (the value is never printed).
    pub fn too_long(field: &str, max_bytes: usize) -> Self {
        Self::new(
            ErrorType::TooLong,
            field,
            None,
            &format!("may not be more than {max_bytes} bytes"),
        )
    }

    /// `Too many: <actual>: must have at most <max> items`.
    pub fn too_many(field: &str, actual: usize, max: usize) -> Self {
        Self::new(
            ErrorType::TooMany,
            field,
            Some(Value::from(actual)),
            &format!("must have at most {max} items"),
        )
    }

    /// `Internal error: <detail>`.
    pub fn internal(field: &str, detail: &str) -> Self {
        Self::new(ErrorType::Internal, field, None, detail)
    }

    /// The message without the field path (Go's `ErrorBody`); the `StatusCause.message`.
    pub fn body(&self) -> String {
        let mut s = self.kind.text().to_owned();
        let prints_value = !matches!(
            self.kind,
            ErrorType::Required | ErrorType::Forbidden | ErrorType::TooLong | ErrorType::Internal
        );
        if let (true, Some(v)) = (prints_value, &self.bad_value) {
            s.push_str(": ");
            s.push_str(&go_value(v, false));
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

impl std::error::Error for FieldError {}

/// Joins errors as Go's `utilerrors.NewAggregate(...).Error()`: duplicates dropped, one
/// message bare, several as `[first, second]`. Empty input gives an empty string.
pub fn aggregate_message<T: fmt::Display>(errors: &[T]) -> String {
    let mut seen: Vec<String> = Vec::new();
    for e in errors {
        let msg = e.to_string();
        if !seen.contains(&msg) {
            seen.push(msg);
        }
    }
    match seen.len() {
        0 => String::new(),
        1 => seen.remove(0),
        _ => format!("[{}]", seen.join(", ")),
    }
}

/// Quotes a string as Go's `%q` / `strconv.Quote` does for the common cases.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Prints a JSON value as Go prints the unstructured value in a field error: scalars with
/// `%v`/`%q`, `nil` as `null`, maps and slices with `%#v` (`nested` selects the `%#v`
/// form for scalars inside them, which is the same except for `nil`).
fn go_value(v: &Value, nested: bool) -> String {
    match v {
        Value::Null if nested => "interface {}(nil)".to_owned(),
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => go_number(n),
        Value::String(s) => go_quote(s),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(|i| go_value(i, true)).collect();
            format!("[]interface {{}}{{{}}}", inner.join(", "))
        }
        Value::Object(map) => {
            // Go prints map keys sorted.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", go_quote(k), go_value(&map[k.as_str()], true)))
                .collect();
            format!("map[string]interface {{}}{{{}}}", inner.join(", "))
        }
    }
}

fn go_number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    // Go's %v for float64 is %g with the shortest representation.
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e21).contains(&abs) {
        let s = format!("{f:e}");
        // Rust prints `1e21`, Go `1e+21`; Rust `1e-5`, Go `1e-05`.
        match s.split_once('e') {
            Some((m, e)) => {
                let (sign, digits) = e.strip_prefix('-').map_or(("+", e), |d| ("-", d));
                format!("{m}e{sign}{digits:0>2}")
            }
            None => s,
        }
    } else {
        f.to_string()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn invalid_value_prints_like_go() {
        let e = FieldError::invalid(
            "spec.replicas",
            json!(-1),
            "must be greater than or equal to 0",
        );
        assert_eq!(
            e.to_string(),
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0"
        );
        let e = FieldError::invalid(
            "metadata.name",
            json!("A_b"),
            "a lowercase RFC 1123 subdomain",
        );
        assert_eq!(
            e.body(),
            "Invalid value: \"A_b\": a lowercase RFC 1123 subdomain"
        );
        assert_eq!(
            FieldError::invalid("x", json!(1.5), "").body(),
            "Invalid value: 1.5"
        );
        assert_eq!(
            FieldError::invalid("x", json!(true), "").body(),
            "Invalid value: true"
        );
        assert_eq!(
            FieldError::invalid("x", json!(null), "").body(),
            "Invalid value: null"
        );
    }

    #[test]
    fn composite_values_print_as_go_sharp_v() {
        let e = FieldError::invalid("spec.l", json!(["a", 1]), "bad");
        assert_eq!(e.body(), "Invalid value: []interface {}{\"a\", 1}: bad");
        let e = FieldError::invalid("spec.m", json!({"b": "x", "a": null}), "bad");
        assert_eq!(
            e.body(),
            "Invalid value: map[string]interface {}{\"a\":interface {}(nil), \"b\":\"x\"}: bad"
        );
    }

    #[test]
    fn value_less_kinds_omit_the_value() {
        assert_eq!(
            FieldError::required("spec.foo", "").to_string(),
            "spec.foo: Required value"
        );
        assert_eq!(
            FieldError::forbidden("spec.foo", "may not be set").to_string(),
            "spec.foo: Forbidden: may not be set"
        );
        assert_eq!(
            FieldError::too_long("spec.name", 5).to_string(),
            "spec.name: Too long: may not be more than 5 bytes"
        );
        assert_eq!(
            FieldError::too_many("spec.items", 3, 2).to_string(),
            "spec.items: Too many: 3: must have at most 2 items"
        );
    }

    #[test]
    fn not_supported_lists_quoted_values() {
        let e =
            FieldError::not_supported("spec.mode", json!("x"), &["Off".into(), "InPlace".into()]);
        assert_eq!(
            e.to_string(),
            "spec.mode: Unsupported value: \"x\": supported values: \"Off\", \"InPlace\""
        );
    }

    #[test]
    fn aggregate_joins_and_dedups() {
        let a = FieldError::required("a", "");
        let b = FieldError::required("b", "");
        assert_eq!(
            aggregate_message(std::slice::from_ref(&a)),
            "a: Required value"
        );
        assert_eq!(
            aggregate_message(&[a.clone(), b, a]),
            "[a: Required value, b: Required value]"
        );
        assert_eq!(aggregate_message::<FieldError>(&[]), "");
    }

    #[test]
    fn go_quote_escapes_controls() {
        assert_eq!(go_quote("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\x01\"");
        assert_eq!(go_quote("ünï"), "\"ünï\"");
    }

    #[test]
    fn go_floats() {
        assert_eq!(go_value(&json!(1e21), false), "1e+21");
        assert_eq!(go_value(&json!(0.00001), false), "1e-05");
        assert_eq!(go_value(&json!(0.5), false), "0.5");
    }

    #[test]
    fn cause_type_round_trips() {
        for t in [
            ErrorType::Invalid,
            ErrorType::Required,
            ErrorType::TooMany,
            ErrorType::TypeInvalid,
        ] {
            assert_eq!(ErrorType::from_cause_type(t.cause_type()), Some(t));
        }
        assert_eq!(ErrorType::from_cause_type("Nope"), None);
    }
}
