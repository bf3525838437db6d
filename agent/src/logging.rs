//! The agent's own log: a global `tracing` subscriber whose filter can be changed while the agent runs.
//!
//! [`init`] installs an [`EnvFilter`] behind a [`reload`] layer and a formatter (text or one JSON object per line)
//! writing to stderr, stdout or a file opened for appending. The returned [`LogHandle`] changes the filter at run
//! time ([`LogHandle::set_level`], what `POST /api/v1/admin {admin: {log_level}}` calls) and reports it
//! ([`LogHandle::level`]).
//!
//! A level is one of the original's (npmlog) names — `silly`, `verbose`, `info`, `notice`, `http`, `warn`, `error`,
//! `silent` — or a list of tracing filter directives such as `info,l7mp_agent::session=debug`. The npmlog names are
//! accepted inside directives too (`l7mp_agent::session=verbose`). A bare word that is not a level is refused (for
//! tracing it would name a target to trace, which is how a typo such as `debgu` silently turns logging off): write a
//! target as `target=level`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use tracing_subscriber::filter::{Directive, EnvFilter};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry, reload};

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-25T21:00:00.123456Z  INFO l7mp_agent::engine: listener started listener=udp-echo protocol="UDP"`
    #[default]
    Text,
    /// One JSON object per line: `{"timestamp":..., "level":"INFO", "fields":{"message":..., ...}, "target":...}`.
    Json,
}

/// Where log lines go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LogTarget {
    #[default]
    Stderr,
    Stdout,
    /// A file, created if missing and appended to.
    File(PathBuf),
}

impl LogTarget {
    /// `stderr`, `stdout` (the original's words; `-` is stdout too), or a file path.
    pub fn parse(s: &str) -> LogTarget {
        match s {
            "stderr" => LogTarget::Stderr,
            "stdout" | "-" => LogTarget::Stdout,
            path => LogTarget::File(PathBuf::from(path)),
        }
    }
}

/// Everything [`init`] needs.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// A level or filter directive list, see the module documentation. Empty means `info`.
    pub level: String,
    pub format: LogFormat,
    pub target: LogTarget,
}

/// Why logging could not be set up or its level changed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log level {level:?}: {directive:?} {reason}")]
    BadDirective {
        level: String,
        directive: String,
        reason: String,
    },
    /// `reason` is the OS error without its number (`Permission denied`).
    #[error("cannot open log file {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    #[error("cannot install the logger: {0}")]
    Install(String),
    #[error("cannot change the log level: {0}")]
    Reload(String),
}

/// Changes and reports the filter of the global logger. Cheap to clone; share it (e.g. as `Arc<LogHandle>` or by
/// clone) with whatever changes the level at run time.
#[derive(Clone)]
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    /// The directive string in force (original level names translated).
    current: Arc<Mutex<String>>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle").field("level", &self.level()).finish()
    }
}

impl LogHandle {
    /// Puts a new level or directive list in force. On error the filter in force is left unchanged.
    pub fn set_level(&self, level: &str) -> Result<(), LogError> {
        let (filter, directives) = parse_filter(level)?;
        // Hold the lock across the reload so that concurrent calls leave `current` matching the filter in force.
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        self.reload
            .reload(filter)
            .map_err(|e| LogError::Reload(e.to_string()))?;
        *current = directives;
        Ok(())
    }

    /// The directive string in force, with the original's level names translated (`verbose` reads `debug`).
    pub fn level(&self) -> String {
        self.current
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// A filter layer with its handle, not installed anywhere (for [`init`] and tests).
    fn layer(level: &str) -> Result<(reload::Layer<EnvFilter, Registry>, LogHandle), LogError> {
        let (filter, directives) = parse_filter(level)?;
        let (layer, reload) = reload::Layer::new(filter);
        Ok((
            layer,
            LogHandle {
                reload,
                current: Arc::new(Mutex::new(directives)),
            },
        ))
    }
}

/// Translates one of the original's level names into a tracing level; anything else is returned as is.
pub(crate) fn translate(word: &str) -> &str {
    match word {
        "silly" => "trace",
        "verbose" => "debug",
        "notice" | "http" => "info",
        "silent" => "off",
        other => other,
    }
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Parses a level or directive list into a filter and the normalised directive string. The error names the first
/// bad directive.
pub fn parse_filter(level: &str) -> Result<(EnvFilter, String), LogError> {
    let bad = |directive: &str, reason: String| LogError::BadDirective {
        level: level.to_owned(),
        directive: directive.to_owned(),
        reason,
    };
    let mut out = Vec::new();
    for raw in level.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let normalised = match raw.rsplit_once('=') {
            // `target=level` (but not the `=` of a field filter such as `[span{x=1}]`, which ends in `]`).
            Some((target, lvl)) if !lvl.contains(']') && !lvl.contains('}') => {
                format!("{target}={}", translate(lvl.trim()))
            }
            Some(_) => raw.to_owned(),
            None => {
                let word = translate(raw);
                let is_level = LEVELS.contains(&word.to_ascii_lowercase().as_str());
                if !is_level && !raw.contains('[') {
                    return Err(bad(
                        raw,
                        "is not a level (expected silly, verbose, info, notice, warn, error, silent, trace, debug \
                         or off, or `target=level` such as `l7mp_agent::session=debug`)"
                            .to_owned(),
                    ));
                }
                word.to_owned()
            }
        };
        if let Err(e) = Directive::from_str(&normalised) {
            return Err(bad(raw, format!("is not a valid filter directive ({e})")));
        }
        out.push(normalised);
    }
    let directives = if out.is_empty() {
        "info".to_owned()
    } else {
        out.join(",")
    };
    let filter = EnvFilter::builder()
        .parse(&directives)
        .map_err(|e| bad(&directives, format!("is not a valid filter ({e})")))?;
    Ok((filter, directives))
}

/// Installs the global logger. Fails when the level is invalid, the log file cannot be opened, or a global logger
/// is already installed.
pub fn init(opts: &LogOptions) -> Result<LogHandle, LogError> {
    let (filter, handle) = LogHandle::layer(&opts.level)?;
    let (writer, ansi) = match &opts.target {
        LogTarget::Stderr => (BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal()),
        LogTarget::Stdout => (BoxMakeWriter::new(std::io::stdout), std::io::stdout().is_terminal()),
        LogTarget::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| LogError::Open {
                    path: path.clone(),
                    reason: os_reason(&e),
                })?;
            (BoxMakeWriter::new(Mutex::new(file)), false)
        }
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match opts.format {
        LogFormat::Text => fmt.with_ansi(ansi).boxed(),
        LogFormat::Json => fmt.json().with_span_list(false).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .map_err(|e| LogError::Install(e.to_string()))?;
    Ok(handle)
}

/// An I/O error's text without the ` (os error N)` suffix: `Permission denied`.
pub fn os_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directives(level: &str) -> String {
        match parse_filter(level) {
            Ok((_, d)) => d,
            Err(e) => panic!("{level:?}: {e}"),
        }
    }

    #[test]
    fn original_names_and_directives_parse() {
        assert_eq!(directives("silly"), "trace");
        assert_eq!(directives("verbose"), "debug");
        assert_eq!(directives("notice"), "info");
        assert_eq!(directives("http"), "info");
        assert_eq!(directives("silent"), "off");
        assert_eq!(directives(""), "info");
        assert_eq!(directives("WARN"), "WARN");
        assert_eq!(
            directives("info, l7mp_agent::session=debug"),
            "info,l7mp_agent::session=debug"
        );
        assert_eq!(
            directives("warn,l7mp_agent::session=verbose"),
            "warn,l7mp_agent::session=debug"
        );
        assert_eq!(
            directives("info,l7mp_agent[session{x=1}]=trace"),
            "info,l7mp_agent[session{x=1}]=trace"
        );
    }

    #[test]
    fn bad_directives_are_named() {
        for (level, bad) in [
            ("debgu", "debgu"),
            ("info,l7mp_agent=loud", "l7mp_agent=loud"),
            ("info,,l7mp_agent::session", "l7mp_agent::session"),
        ] {
            match parse_filter(level) {
                Ok(_) => panic!("{level:?} was accepted"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("{bad:?}")), "{level:?}: {msg}");
                }
            }
        }
    }

    #[test]
    fn set_level_changes_the_filter_and_a_bad_one_leaves_it() {
        let (layer, handle) = LogHandle::layer("warn").expect("layer");
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            assert!(!tracing::enabled!(tracing::Level::INFO));
            handle.set_level("verbose").expect("verbose");
            assert_eq!(handle.level(), "debug");
            assert!(tracing::enabled!(tracing::Level::DEBUG));
            assert!(!tracing::enabled!(tracing::Level::TRACE));

            let e = handle.set_level("info,nonsense=xyz").expect_err("invalid");
            assert!(e.to_string().contains("\"nonsense=xyz\""), "{e}");
            assert_eq!(handle.level(), "debug");
            assert!(tracing::enabled!(tracing::Level::DEBUG));

            handle.set_level("error,l7mp_agent::logging=trace").expect("per module");
            assert!(!tracing::enabled!(target: "l7mp_agent::engine", tracing::Level::WARN));
            assert!(tracing::enabled!(target: "l7mp_agent::logging", tracing::Level::TRACE));
            assert_eq!(handle.level(), "error,l7mp_agent::logging=trace");
        });
    }

    #[test]
    fn targets_parse() {
        assert_eq!(LogTarget::parse("stderr"), LogTarget::Stderr);
        assert_eq!(LogTarget::parse("stdout"), LogTarget::Stdout);
        assert_eq!(LogTarget::parse("/tmp/x.log"), LogTarget::File("/tmp/x.log".into()));
    }

    #[test]
    fn os_reason_drops_the_number() {
        let e = std::io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(os_reason(&e), "Permission denied");
    }
}
