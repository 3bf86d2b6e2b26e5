//! Logging: the tracing subscriber the binary installs, with its filter (the `log` key)
//! behind a reload handle so a configuration reload changes it in place.
//!
//! ruma's state resolution logs each authorization check of every event at `info` (two lines,
//! about 530 bytes, per appended event): unless the filter names `ruma_state_res` or asks for
//! `debug` or `trace` everywhere, those are kept to warnings, so `info` logs what an operator
//! reads, not one line per message.

use tracing_subscriber::{
    EnvFilter, Registry, layer::SubscriberExt as _, reload, util::SubscriberInitExt as _,
};

use crate::{config::Config, reload::LiveReload};

/// The installed filter, live-reloadable.
pub struct LogFilter {
    handle: reload::Handle<EnvFilter, Registry>,
}

/// Install the process-wide subscriber with `filter` (`EnvFilter` syntax, checked by
/// `Config`) and return its reload handle.
pub fn init(filter: &str) -> LogFilter {
    let (filter, handle) = reload::Layer::new(EnvFilter::new(effective(filter)));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                // Colour codes only for a terminal; the journal and log files get plain text.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
        )
        .init();
    LogFilter { handle }
}

impl LiveReload for LogFilter {
    fn name(&self) -> &'static str {
        "log level"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["log"]
    }

    /// `Config`'s own check already refuses a filter that does not parse; this keeps the part
    /// safe for a configuration built some other way.
    fn check(&self, new: &Config) -> Result<(), String> {
        EnvFilter::try_new(&new.log).map(drop).map_err(|e| format!("`log = {:?}`: {e}", new.log))
    }

    fn apply(&self, new: &Config) -> Result<(), String> {
        let filter = EnvFilter::try_new(effective(&new.log)).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// The filter installed for the configured `log`: per-event chatter of dependencies kept to
/// warnings unless the operator asked for it.
pub fn effective(configured: &str) -> String {
    let directives: Vec<&str> = configured.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    let verbose_everywhere = directives
        .iter()
        .any(|d| !d.contains('=') && matches!(d.to_ascii_lowercase().as_str(), "debug" | "trace"));
    if verbose_everywhere || directives.iter().any(|d| d.starts_with("ruma_state_res")) {
        return configured.to_owned();
    }
    if directives.is_empty() {
        "ruma_state_res=warn".to_owned()
    } else {
        format!("{configured},ruma_state_res=warn")
    }
}

#[cfg(test)]
mod tests {
    use super::effective;

    #[test]
    fn state_resolution_chatter_is_quiet_unless_asked_for() {
        assert_eq!(effective("info"), "info,ruma_state_res=warn");
        assert_eq!(effective("warn,conduit=debug"), "warn,conduit=debug,ruma_state_res=warn");
        assert_eq!(effective("debug"), "debug");
        assert_eq!(effective("info,ruma_state_res=info"), "info,ruma_state_res=info");
    }
}
