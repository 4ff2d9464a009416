//! Application state from the old generation to the new, during a restart.
//!
//! The application gives the process owner a producer
//! ([`ProcessBuilder::state`](crate::ProcessBuilder::state)): at each restart, before
//! the new generation is started, the old one calls it (on the blocking pool, bounded
//! by the ready timeout) and puts the bytes it returns, at most [`MAX_STATE`], in a
//! sealed file (a memory file sealed against writes on Linux, an unlinked read-only
//! temporary file elsewhere: the new generation reads exactly what was written and
//! cannot change it). The file travels with the
//! listeners under the reserved name `fd:ceaseless.state`; the new generation reads it
//! as it starts ([`Process::inherited_state`](crate::Process::inherited_state)).
//!
//! Failures roll the restart back: a producer that fails, panics, is too slow or
//! returns too much fails the restart before anything is started; a new generation that
//! cannot read the state fails to start ([`Error::State`]), or rejects what it read and
//! exits, and the old one keeps serving. The bytes are the application's, versioned by
//! the application: ceaseless neither parses nor checks them.

#[cfg(unix)]
use std::os::fd::OwnedFd;
use std::sync::Arc;
#[cfg(unix)]
use std::time::Duration;

#[cfg(unix)]
use crate::error::{Error, RestartError};

#[cfg(unix)]
/// The name the state's memory file travels under.
pub(crate) const NAME: &str = "ceaseless.state";

/// The largest state a generation hands over, in bytes.
pub const MAX_STATE: usize = 64 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The application's state producer.
pub(crate) type Producer = Arc<dyn Fn() -> Result<Vec<u8>, BoxError> + Send + Sync>;

#[cfg(unix)]
fn failed(reason: impl Into<String>) -> RestartError {
    RestartError::State(reason.into())
}

#[cfg(unix)]
/// Runs the producer and seals what it returns into a memory file.
pub(crate) async fn produce(p: &Producer, timeout: Duration) -> Result<OwnedFd, RestartError> {
    let p = p.clone();
    let made = tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || p())).await;
    let bytes = match made {
        Err(_) => {
            return Err(failed(format!(
                "the state producer took longer than {timeout:?}"
            )))
        }
        Ok(Err(e)) => return Err(failed(format!("the state producer panicked: {e}"))),
        Ok(Ok(Err(e))) => return Err(failed(format!("the state producer failed: {e}"))),
        Ok(Ok(Ok(b))) => b,
    };
    if bytes.len() > MAX_STATE {
        return Err(failed(format!(
            "the state is {} bytes, more than the {MAX_STATE} allowed",
            bytes.len()
        )));
    }
    sealed(&bytes).map_err(|e| failed(format!("cannot hold the state in memory: {e}")))
}

#[cfg(unix)]
/// A file holding `bytes`, sealed against any change (the OS layer's `sealed` module
/// says how, on each platform).
pub(crate) fn sealed(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    crate::sys::sealed::file(bytes)
}

#[cfg(unix)]
/// Reads the state handed over in `fd`.
pub(crate) fn read(fd: OwnedFd) -> Result<Vec<u8>, Error> {
    match crate::sys::sealed::read_all(fd, MAX_STATE) {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(Error::State {
            reason: format!("the state handed over is larger than {MAX_STATE} bytes"),
        }),
        Err(e) => Err(Error::State {
            reason: format!("cannot read the state the previous generation handed over: {e}"),
        }),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_is_produced_is_read_back_and_cannot_be_changed() {
        let p: Producer = Arc::new(|| Ok(b"count 42".to_vec()));
        let fd = produce(&p, Duration::from_secs(5)).await.unwrap();
        let copy = fd.try_clone().unwrap();
        assert_eq!(read(fd).unwrap(), b"count 42");
        let mut f = std::fs::File::from(copy);
        use std::io::Write;
        assert!(f.write_all(b"x").is_err(), "the file is sealed");
    }

    #[tokio::test]
    async fn a_failing_slow_or_oversized_producer_fails_the_restart() {
        let failing: Producer = Arc::new(|| Err("no cache yet".into()));
        let e = produce(&failing, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("no cache yet"), "{e}");
        let slow: Producer = Arc::new(|| {
            std::thread::sleep(Duration::from_millis(500));
            Ok(Vec::new())
        });
        let e = produce(&slow, Duration::from_millis(50)).await.unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        let big: Producer = Arc::new(|| Ok(vec![0; MAX_STATE + 1]));
        let e = produce(&big, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        let panics: Producer = Arc::new(|| panic!("boom"));
        let e = produce(&panics, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("panicked"), "{e}");
    }
}
