//! Configuration errors: each names the field path and the reason.

use crate::path::FieldPath;
use std::fmt;

/// One problem at one place in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FieldError {
    pub path: FieldPath,
    pub reason: String,
}

impl FieldError {
    pub fn new(path: &FieldPath, reason: impl Into<String>) -> Self {
        Self {
            path: path.clone(),
            reason: reason.into(),
        }
    }
}

/// Why a configuration was rejected. A rejected configuration is rejected whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not valid YAML/JSON.
    #[error("cannot parse the configuration as {format}: {message}")]
    Syntax { format: &'static str, message: String },
    /// The document parsed but some fields are wrong; every problem found is listed.
    #[error("{}", ErrorList(.0))]
    Invalid(Vec<FieldError>),
}

impl ConfigError {
    /// The field errors (empty for syntax errors).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid(v) => v,
            ConfigError::Syntax { .. } => &[],
        }
    }
}

struct ErrorList<'a>(&'a [FieldError]);

impl fmt::Display for ErrorList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
