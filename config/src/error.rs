//! Errors that name the file, the key and the reason.

use std::fmt;

/// One problem found by validation: `key` is a path such as `device[1].block_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Every problem validation found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// The problem reported for `key`, if any.
    pub fn for_key(&self, key: &str) -> Option<&FieldError> {
        self.0.iter().find(|e| e.key == key)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: {source}")]
    Io {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: file is {len} bytes, larger than the {max}-byte limit for a config file")]
    TooLarge { origin: String, len: u64, max: u64 },
    /// TOML syntax or type error (including unknown keys).
    #[error("{origin}{}{}: {reason}", location(*line, *column), key.as_ref().map(|k| format!(": key `{k}`")).unwrap_or_default())]
    Parse {
        origin: String,
        key: Option<String>,
        line: Option<usize>,
        column: Option<usize>,
        reason: String,
    },
    /// The TOML parsed but breaks a rule; one entry per problem.
    #[error("{origin}: invalid configuration: {}", errors.0.iter().map(|e| format!("`{}`: {}", e.key, e.reason)).collect::<Vec<_>>().join("; "))]
    Invalid {
        origin: String,
        errors: ValidationErrors,
    },
}

fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        _ => String::new(),
    }
}

impl ConfigError {
    /// The key the (first) problem is about, if known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Parse { key, .. } => key.as_deref(),
            ConfigError::Invalid { errors, .. } => errors.0.first().map(|e| e.key.as_str()),
            _ => None,
        }
    }
}
