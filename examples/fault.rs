//! A successor that fails on cue, for the tests of the handover (and for trying
//! ceaseless's failure handling by hand): installed where the binary of a running
//! server is, it is what the server's next restart executes. It starts the real binary
//! (`FAULT_EXEC`) with the same arguments, descriptors and environment, sits on the
//! readiness channel between the two generations, passing every message on, and at one
//! step of the commit's exchange makes the new generation fail.
//!
//! ```text
//! FAULT_EXEC=/path/to/hello   the real new generation
//! FAULT_AT=start              right after it started (before `ready`)
//!          ready              once its `ready` was passed on
//!          go                 once the old generation's `go` was passed on
//!          holding            when it says `holding`, before that is passed on
//!          acked              once the old generation's `live` was passed on (the
//!                             old one has committed to it)
//! FAULT_DO=kill               SIGKILL it; this process dies of SIGKILL too
//!          exit               SIGKILL it; this process exits with status 3
//!          hang               SIGSTOP it and pass nothing on any more (a quiet
//!                             generation); SIGTERM to this process kills it
//! ```
//!
//! The old generation sees this process as its child; the real one is this process's,
//! with `CEASELESS_PARENT_PID` naming this process so that it honours the handover.
//!
//! A takeover goes over the old process's control socket instead: with
//! `FAULT_TAKEOVER=<its control socket>` and `FAULT_PROXY=<a path of ours>`, this
//! process listens at the proxy path and starts the real binary with the arguments it
//! was given (which name the proxy in `--takeover`, and the real control socket in
//! `--control`); it passes the newcomer's request and the old process's offer, with its
//! descriptors, through, then sits on the connection as above. `start` then means once
//! the offer was passed on.

//!
//! It needs Unix, as restarts do: elsewhere it says so and exits with status 2.

#[cfg(unix)]
fn main() -> std::process::ExitCode {
    unix::main()
}

#[cfg(not(unix))]
fn main() -> std::process::ExitCode {
    eprintln!("fault: it fails restarts on cue, and restarts need Unix");
    std::process::ExitCode::from(2)
}

#[cfg(unix)]
mod unix {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::process::ExitCode;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::signal::unix::{signal, SignalKind};

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum At {
        Start,
        Ready,
        Go,
        Holding,
        Acked,
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Action {
        Kill,
        Exit,
        Hang,
    }

    fn parse() -> Result<(String, At, Action), String> {
        let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
        let at = match var("FAULT_AT")?.as_str() {
            "start" => At::Start,
            "ready" => At::Ready,
            "go" => At::Go,
            "holding" => At::Holding,
            "acked" => At::Acked,
            other => return Err(format!("FAULT_AT: unknown step {other:?}")),
        };
        let action = match var("FAULT_DO")?.as_str() {
            "kill" => Action::Kill,
            "exit" => Action::Exit,
            "hang" => Action::Hang,
            other => return Err(format!("FAULT_DO: unknown action {other:?}")),
        };
        Ok((var("FAULT_EXEC")?, at, action))
    }

    fn pid_of(child: &tokio::process::Child) -> Option<rustix::process::Pid> {
        child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    }

    /// Makes the new generation fail as `action` says; returns this process's exit code
    /// (`None`: it goes on, quiet).
    async fn fail(child: &mut tokio::process::Child, at: At, action: Action) -> Option<ExitCode> {
        eprintln!("fault: {action:?} at {at:?}");
        match action {
            Action::Hang => {
                if let Some(pid) = pid_of(child) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::STOP);
                }
                None
            }
            Action::Kill | Action::Exit => {
                let _ = child.kill().await;
                if action == Action::Kill {
                    let _ = rustix::process::kill_process(
                        rustix::process::getpid(),
                        rustix::process::Signal::KILL,
                    );
                }
                Some(ExitCode::from(3))
            }
        }
    }

    /// Moves the old generation's channel off the number the handover gave it and puts a
    /// channel to us there, then starts the real binary on it: the old generation's end,
    /// the real one's, and the real one.
    fn restart_channels(exec: &str, ready_fd: i32) -> std::io::Result<Channels> {
        // SAFETY: the old generation handed this descriptor over under this number (its
        // end of the readiness channel); nothing else in this process owns it.
        let mut slot = unsafe { OwnedFd::from_raw_fd(ready_fd) };
        let up = rustix::io::fcntl_dupfd_cloexec(&slot, 0)?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        rustix::io::dup2(&theirs, &mut slot)?;
        let child = tokio::process::Command::new(exec)
            .arg0(exec)
            .args(std::env::args_os().skip(1))
            .env("CEASELESS_PARENT_PID", std::process::id().to_string())
            .spawn()?;
        Ok((up.into(), ours, child))
    }

    type Channels = (
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
        tokio::process::Child,
    );

    /// One message with its descriptors, from `from` to `to`.
    fn pass_with_fds(
        from: &std::os::unix::net::UnixStream,
        to: &std::os::unix::net::UnixStream,
    ) -> std::io::Result<usize> {
        use rustix::net::{
            RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
            SendAncillaryMessage, SendFlags,
        };
        let mut buf = vec![0u8; 256 * 1024];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            from,
            &mut [std::io::IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
        }
        let borrowed: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
        let mut out_space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut out = SendAncillaryBuffer::new(&mut out_space);
        if !borrowed.is_empty() {
            out.push(SendAncillaryMessage::ScmRights(&borrowed));
        }
        rustix::net::sendmsg(
            to,
            &[std::io::IoSlice::new(&buf[..got.bytes])],
            &mut out,
            SendFlags::empty(),
        )?;
        Ok(got.bytes)
    }

    /// A takeover: listens at `proxy`, starts the real newcomer (whose arguments name the
    /// proxy), and passes its request and the old process's offer through.
    fn takeover_channels(exec: &str, real: &str, proxy: &str) -> std::io::Result<Channels> {
        use std::io::{BufRead, Write};
        let _ = std::fs::remove_file(proxy);
        let listener = std::os::unix::net::UnixListener::bind(proxy)?;
        let child = tokio::process::Command::new(exec)
            .arg0(exec)
            .args(std::env::args_os().skip(1))
            .spawn()?;
        let (down, _) = listener.accept()?;
        let _ = std::fs::remove_file(proxy);
        let up = std::os::unix::net::UnixStream::connect(real)?;
        let mut request = String::new();
        std::io::BufReader::new(&down).read_line(&mut request)?;
        (&up).write_all(request.as_bytes())?;
        // The offer: one line, its descriptors with its first bytes.
        pass_with_fds(&up, &down)?;
        Ok((up, down, child))
    }

    #[tokio::main(flavor = "current_thread")]
    pub(super) async fn main() -> ExitCode {
        if let Some(once) = std::env::var_os("FAULT_ONCE") {
            if std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&once)
                .is_err()
            {
                // Failed once already (or cannot tell): be the real binary.
                let Some(exec) = std::env::var_os("FAULT_EXEC") else {
                    eprintln!("fault: FAULT_EXEC is not set");
                    return ExitCode::from(2);
                };
                use std::os::unix::process::CommandExt;
                let e = std::process::Command::new(&exec)
                    .arg0(&exec)
                    .args(std::env::args_os().skip(1))
                    .exec();
                eprintln!("fault: cannot execute {}: {e}", exec.to_string_lossy());
                return ExitCode::from(2);
            }
        }
        let (exec, at, action) = match parse() {
            Ok(v) => v,
            Err(e) => {
                eprintln!("fault: {e}");
                return ExitCode::from(2);
            }
        };
        let takeover = (
            std::env::var("FAULT_TAKEOVER").ok(),
            std::env::var("FAULT_PROXY").ok(),
        );
        let channels = match takeover {
            (Some(real), Some(proxy)) => takeover_channels(&exec, &real, &proxy),
            _ => match std::env::var("CEASELESS_READY_FD").map(|v| v.parse::<i32>()) {
                Ok(Ok(fd)) => restart_channels(&exec, fd),
                _ => {
                    eprintln!(
                        "fault: neither CEASELESS_READY_FD nor FAULT_TAKEOVER and FAULT_PROXY"
                    );
                    return ExitCode::from(2);
                }
            },
        };
        let (upstream, ours, mut child) = match channels {
            Ok(v) => v,
            Err(e) => {
                eprintln!("fault: cannot set up the channels: {e}");
                return ExitCode::from(2);
            }
        };
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        if at == At::Start {
            if let Some(code) = fail(&mut child, at, action).await {
                return code;
            }
        }
        let into_tokio = |s: std::os::unix::net::UnixStream| {
            s.set_nonblocking(true)?;
            tokio::net::UnixStream::from_std(s)
        };
        let (Ok(upstream), Ok(ours)) = (into_tokio(upstream), into_tokio(ours)) else {
            eprintln!("fault: cannot use the channels");
            return ExitCode::from(2);
        };
        let (up_r, mut up_w) = upstream.into_split();
        let (down_r, mut down_w) = ours.into_split();
        let (mut up_r, mut down_r) = (BufReader::new(up_r), BufReader::new(down_r));
        let (mut from_old, mut from_new) = (String::new(), String::new());
        let mut quiet = at == At::Start;
        loop {
            // Whether the step of the fault was reached.
            let due = tokio::select! {
                read = down_r.read_line(&mut from_new), if !quiet => {
                    if !matches!(read, Ok(n) if n > 0) {
                        quiet = true; // its end closed: it exits, which `wait` below sees
                        continue;
                    }
                    let word = from_new.trim_end().to_string();
                    // `holding` is failed before it is passed on; every other step after.
                    if !(at == At::Holding && word == "holding") {
                        let _ = up_w.write_all(from_new.as_bytes()).await;
                    }
                    from_new.clear();
                    (at == At::Ready && word.starts_with("ready "))
                        || (at == At::Holding && word == "holding")
                }
                read = up_r.read_line(&mut from_old), if !quiet => {
                    if !matches!(read, Ok(n) if n > 0) {
                        drop(down_w.shutdown().await);
                        quiet = true;
                        continue;
                    }
                    let _ = down_w.write_all(from_old.as_bytes()).await;
                    let word = from_old.trim_end();
                    let due = (at == At::Go && word == "go") || (at == At::Acked && word == "live");
                    from_old.clear();
                    due
                }
                status = child.wait() => {
                    let code = status.ok().and_then(|s| s.code()).unwrap_or(1);
                    return ExitCode::from(u8::try_from(code).unwrap_or(1));
                }
                _ = term.recv() => {
                    // Stopped by the old generation: a quiet child cannot answer SIGTERM.
                    if action == Action::Hang {
                        let _ = child.kill().await;
                    } else if let Some(pid) = pid_of(&child) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                        let _ = child.wait().await;
                    }
                    return ExitCode::from(143);
                }
            };
            if due {
                match fail(&mut child, at, action).await {
                    Some(code) => return code,
                    None => quiet = true,
                }
            }
        }
    }
}
