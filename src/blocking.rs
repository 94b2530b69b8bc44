//! Filesystem and librdkafka calls that block, run off the async workers.
//!
//! One decision about panics, for every caller: a panic on the blocking pool
//! is a bug in spansink's own code (the spool, the crash guard, a client
//! call), never the fault of the message being handled. It becomes
//! [`Error::Internal`], which is fatal: the process exits and restarts with
//! nothing moved, instead of dead-lettering a message that did nothing wrong
//! (`Error::Panic` is poison) or retrying a bug forever (transient).

use crate::error::{Error, Result};

/// Runs `f` on the blocking pool; `what` names the call in the error.
pub async fn run<T, F>(what: &'static str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) if join.is_panic() => Err(Error::Internal(format!(
            "{what} panicked: {}",
            crate::error::panic_message(&join.into_panic())
        ))),
        // Only a runtime shutting down cancels a blocking task.
        Err(_) => Err(Error::Shutdown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_an_internal_error_naming_the_call() {
        let got = run("spool write", || -> Result<()> { panic!("bug") }).await;
        match got {
            Err(e @ Error::Internal(_)) => {
                assert_eq!(e.class(), crate::error::Class::Fatal);
                assert!(e.to_string().contains("spool write panicked: bug"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn results_pass_through() {
        assert_eq!(run("x", || Ok(7)).await.ok(), Some(7));
    }
}
