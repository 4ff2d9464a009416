//! Sockets: what an error of theirs means.

use std::io;

use rustix::io::Errno;

/// Whether `e` says the process ran out of descriptors or memory (an accept that
/// failed so is retried after a pause; any other error is the connection's).
pub(crate) fn out_of_resources(e: &io::Error) -> bool {
    #[cfg(unix)]
    let exhausted = [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM];
    // Winsock's: out of sockets, out of buffer space.
    #[cfg(windows)]
    let exhausted = [Errno::MFILE, Errno::NOBUFS];
    exhausted
        .iter()
        .any(|x| e.raw_os_error() == Some(x.raw_os_error()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_is_told_from_other_errors() {
        let emfile = io::Error::from_raw_os_error(Errno::MFILE.raw_os_error());
        assert!(out_of_resources(&emfile));
        assert!(!out_of_resources(&io::Error::from(
            io::ErrorKind::ConnectionReset
        )));
    }
}
