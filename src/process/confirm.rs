//! A new generation's side of the handover once it declared ready: the exchange with
//! the previous generation (the `commit` module's `New` machine), waiting for the
//! servers' claims, and going live.

use super::*;

impl Process {
    fn unclaimed(&self) -> usize {
        self.lock().inherited.unclaimed_listeners()
    }

    /// Waits until the servers claimed every inherited listener, or until the claim
    /// grace ends, and closes what is still unclaimed then (a port this version no
    /// longer serves).
    async fn settle_claims(&self) {
        let deadline = crate::duration::deadline(CLAIM_GRACE);
        let mut claims = self.inner.claims.subscribe();
        while self.unclaimed() > 0 {
            tokio::select! {
                changed = claims.changed() => if changed.is_err() { break },
                _ = crate::duration::sleep_until(deadline) => break,
            }
        }
        self.lock().inherited.close_unclaimed();
    }

    /// [`Process::settle_claims`] in a task of its own, for a live generation that owes
    /// nobody an answer.
    pub(super) fn close_unclaimed_later(&self, core: &Core) {
        if core.inherited.unclaimed_listeners() == 0 {
            return;
        }
        let p = self.clone();
        self.spawn(async move { p.settle_claims().await });
    }

    /// A generation started by a restart or a takeover, once ready: the commit's
    /// exchange with the previous generation (the `commit` module), to its end.
    pub(super) async fn confirm(&self, channel: ReadyChannel) {
        let report = Message::Ready(std::process::id()).encode();
        let fd = match channel {
            ReadyChannel::Pipe(fd) => {
                // No answer comes on a pipe: report once holding, and be live.
                self.settle_claims().await;
                if let Err(e) = write_all(&fd, report.as_bytes()) {
                    tracing::error!(error = %e, "cannot report readiness to the previous generation");
                }
                return self.went_live();
            }
            ReadyChannel::Socket(fd) => fd,
        };
        let std = std::os::unix::net::UnixStream::from(fd);
        match std
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(std))
        {
            Ok(stream) => self.exchange(stream, &report).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot use the channel to the previous generation; taking over");
                self.went_live();
            }
        }
    }

    /// The new generation's side of the exchange on a socket, driven by the `commit`
    /// module's machine: report, then answer `go` with `holding` once every inherited
    /// listener is claimed (or the claim grace ended), then be live or drain.
    async fn exchange(&self, stream: tokio::net::UnixStream, report: &str) {
        use tokio::io::AsyncWriteExt;
        let (reader, mut writer) = stream.into_split();
        let mut reader = tokio::io::BufReader::new(reader);
        let mut claims = self.inner.claims.subscribe();
        let mut new = New::Starting {
            claimed: self.unclaimed() == 0,
        }
        .step(Heard::Ready)
        .0;
        let mut heard = match writer.write_all(report.as_bytes()).await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot report readiness; the previous generation is gone, taking over");
                Some(Heard::Closed)
            }
        };
        let mut grace: Option<tokio::time::Instant> = None;
        // The probation the previous generation parks for, told before `live`.
        let mut probation: Option<u64> = None;
        loop {
            let h = match heard.take() {
                Some(h) => h,
                None => self.hear(&mut reader, &mut claims, new, grace).await,
            };
            if let Heard::Word(Message::Probation(ms)) = h {
                // Echoed at once: the parked generation then takes this channel's
                // closing without `release` for a crash of this one.
                if new == New::Acknowledged && probation.is_none() {
                    probation = Some(ms);
                    let _ = writer
                        .write_all(Message::Probation(ms).encode().as_bytes())
                        .await;
                }
                continue;
            }
            let (next, act) = new.step(h);
            new = next;
            match act {
                Do::Wait | Do::Report => {
                    if new == New::Claiming && grace.is_none() {
                        // Claims may have landed between the last look and `go`.
                        if self.unclaimed() == 0 {
                            heard = Some(Heard::AllClaimed);
                        } else {
                            grace = Some(tokio::time::Instant::now() + CLAIM_GRACE);
                        }
                    }
                }
                Do::Acknowledge { close_unclaimed } => {
                    grace = None;
                    if close_unclaimed {
                        self.lock().inherited.close_unclaimed();
                    }
                    match writer.write_all(Message::Holding.encode().as_bytes()).await {
                        Ok(()) => {
                            tracing::debug!("holding every listener; told the previous generation")
                        }
                        Err(_) => heard = Some(Heard::Closed),
                    }
                }
                Do::BecomeLive => {
                    let Some(ms) = probation else {
                        return self.went_live();
                    };
                    // Live and on probation at once: a rollback asked for the moment
                    // this generation answers finds the probation on.
                    let asks = {
                        let mut core = self.lock();
                        let live = self.live_now(&mut core);
                        let asks = live.then(|| self.probation_on(&mut core, ms));
                        self.after_live(&mut core);
                        asks
                    };
                    match asks {
                        Some(asks) => self.begin_probation(reader, writer, ms, asks),
                        // A deferred shutdown gave up waiting: the probation is over.
                        None => {
                            let mut writer = writer;
                            let _ = writer.write_all(Message::Release.encode().as_bytes()).await;
                        }
                    }
                    return;
                }
                Do::Drain => {
                    let mut core = self.lock();
                    if core.state.phase == Phase::Confirming {
                        tracing::info!(
                            pid = std::process::id(),
                            "the previous generation called the restart off"
                        );
                        self.abandon(&mut core);
                    }
                    return;
                }
            }
        }
    }

    /// What the new generation hears next: a word from the previous generation, its
    /// channel closing, the last claim (while claims are awaited), the grace's end.
    async fn hear(
        &self,
        reader: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
        claims: &mut tokio::sync::watch::Receiver<()>,
        new: New,
        grace: Option<tokio::time::Instant>,
    ) -> Heard {
        use tokio::io::AsyncBufReadExt;
        let mut claiming = matches!(new, New::Reported { claimed: false } | New::Claiming);
        let mut line = String::new();
        loop {
            line.clear();
            tokio::select! {
                read = reader.read_line(&mut line) => return match read {
                    Ok(n) if n > 0 => match Message::decode(&line) {
                        Some(m) => Heard::Word(m),
                        None => {
                            tracing::warn!(line = %line.trim_end(), "unexpected message from the previous generation");
                            continue;
                        }
                    },
                    _ => Heard::Closed,
                },
                changed = claims.changed(), if claiming => {
                    // (The sender lives as long as this process owner: never closed.)
                    claiming = changed.is_ok();
                    if claiming && self.unclaimed() == 0 {
                        return Heard::AllClaimed;
                    }
                }
                _ = tokio::time::sleep_until(grace.unwrap_or_else(tokio::time::Instant::now)), if grace.is_some() => return Heard::GraceOver,
            }
        }
    }

    /// The previous generation committed (or is gone): this one is live. A shutdown
    /// asked for meanwhile begins now, with its lame duck.
    fn went_live(&self) {
        let mut core = self.lock();
        if self.live_now(&mut core) {
            self.after_live(&mut core);
        }
    }

    /// Becomes live, unless a deferred shutdown gave up waiting: whether it did. The
    /// state is published by [`Process::after_live`].
    fn live_now(&self, core: &mut Core) -> bool {
        if core.state.phase != Phase::Confirming {
            return false;
        }
        core.become_live();
        true
    }

    /// Publishes the live state, then what was deferred until then.
    fn after_live(&self, core: &mut Core) {
        if !(core.state.live && core.state.phase == Phase::Serving) {
            return;
        }
        self.inner.publisher.publish(core.state);
        self.close_unclaimed_later(core);
        if std::mem::take(&mut core.shutdown_deferred) {
            self.begin_shutdown(core);
        }
    }
}
