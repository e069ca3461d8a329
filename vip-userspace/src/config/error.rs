//! What is wrong with a file: [`ConfigError`] names the file, and (for a
//! value) the field path and the fix; [`FieldError`] is the field path and
//! the fix before the file is known, as the checks return it.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML, or a value written as text, does not parse.
    #[error("{path}: {field}: {message}")]
    Parse {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// Every value parses, but one is out of range or contradicts another.
    #[error("{path}: {error}")]
    Invalid { path: PathBuf, error: FieldError },
    /// The file is valid, but this node's values cannot be resolved from it.
    #[error("{path}: {error}")]
    Node {
        path: PathBuf,
        error: super::node::NodeError,
    },
    #[error("{path}: reading this node's interfaces to resolve its values: {error}")]
    Facts {
        path: PathBuf,
        error: crate::link::LinkError,
    },
}

/// One field's problem: its path in the file (`services[0].probe.timeout`)
/// and a message that ends with the fix. The path is said once, here.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same problem seen from the enclosing section: `timeout` under
    /// `services[0].probe` is `services[0].probe.timeout`.
    pub fn under(self, section: &str) -> FieldError {
        FieldError {
            field: format!("{section}.{}", self.field),
            message: self.message,
        }
    }
}

/// The snapshot settings' checks return (field, message) pairs.
impl From<(String, String)> for FieldError {
    fn from((field, message): (String, String)) -> FieldError {
        FieldError { field, message }
    }
}

/// The parser's message as the operator reads it after the field path:
/// serde_yaml_ng starts it with its own copy of that path, said once here;
/// a bare type ("expected u16") becomes the range to use, and a missing
/// field says to add it.
pub(super) fn parse_message(field: &str, message: &str) -> String {
    // serde_yaml_ng names the mapping it was in (the field itself, or for
    // a value parsed from text, the section around it).
    let m = message
        .split_once(": ")
        .filter(|(p, _)| {
            field == *p
                || field
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        })
        .map_or(message, |(_, m)| m);
    let name = field.rsplit('.').next().unwrap_or(field);
    let range = |ty: &str| match (ty, name) {
        ("u16", "port") => Some("use a port number in 1..65535"),
        ("u8", "vrid" | "priority") => Some("use 1..255"),
        ("u8", _) => Some("use a whole number in 0..255"),
        ("u16", _) => Some("use a whole number in 0..65535"),
        ("u32", _) => Some("use a whole number in 0..4294967295"),
        _ => None,
    };
    let hint = if let Some(ty) = m
        .split("expected ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        && let Some(r) = range(ty)
    {
        Some(r.to_owned())
    } else {
        m.split("missing field `")
            .nth(1)
            .and_then(|t| t.split('`').next())
            .map(|missing| format!("add `{missing}:` here (see the configuration table in README)"))
    };
    match hint {
        Some(h) => format!("{m}; {h}"),
        None => m.to_owned(),
    }
}
