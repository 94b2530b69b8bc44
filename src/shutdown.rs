//! SIGTERM and SIGINT become one cancellation token, and a fatal error found
//! anywhere stops the process through the same token.
//!
//! Cancellation stops fetching; workers then finish their in-flight batch,
//! commit, and the consumer leaves its group. A second signal exits at once:
//! nothing is lost by that, because no offset moves before its data is durable.

use std::sync::{Arc, Mutex};

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// Installs the signal handlers and returns the token they cancel.
pub fn install() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutdown requested: draining in-flight batches"
        );
        cancel.cancel();
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
    Ok(token)
}

/// Stops the process for a fatal error, keeping the first one for the exit.
#[derive(Debug, Clone)]
pub struct Stopper {
    token: CancellationToken,
    fatal: Arc<Mutex<Option<Error>>>,
}

impl Stopper {
    pub fn new(token: CancellationToken) -> Self {
        Stopper {
            token,
            fatal: Arc::new(Mutex::new(None)),
        }
    }

    /// Records a fatal error and starts shutdown.
    pub fn fail(&self, err: Error) {
        let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if fatal.is_none() {
            tracing::error!(error = %err, "fatal: shutting down");
            *fatal = Some(err);
        }
        self.token.cancel();
    }

    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The fatal error, if one stopped the process.
    pub fn take_fatal(&self) -> Option<Error> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
