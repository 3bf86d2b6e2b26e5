//! Logging: the tracing subscriber the binary installs, with its filter (the `log` key)
//! behind a reload handle so a configuration reload changes it in place.

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
    let (filter, handle) = reload::Layer::new(EnvFilter::new(filter));
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
        let filter = EnvFilter::try_new(&new.log).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}
