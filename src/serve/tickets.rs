//! TLS session tickets that every generation can read, so that a client resumes its
//! session across a restart instead of making a full handshake (with a restart every
//! client reconnects at once: see BENCHMARKS.md).
//!
//! rustls's own ticketer draws a random key per process, so tickets of the old
//! generation are noise to the new one. Here the first generation draws a 256-bit key,
//! keeps it in a sealed file handed over with the sockets under the reserved
//! name `fd:ceaseless.tls-tickets`, and every later generation reads the same key.
//! Tickets are sealed with ChaCha20-Poly1305 (ring's or aws-lc-rs's, as the provider
//! the cargo features choose; with `tls` alone there is no shared ticketer) under a fresh random nonce, with the period they were issued in
//! (6 hours) as associated data: a ticket is accepted in its own period and the next,
//! then never. Written by hand because rustls has no ticketer with a key given from
//! outside. What it does not do: rotate the key itself (it lives as long as the
//! service, from its first generation; a fresh start draws a new one), so a leaked key
//! exposes the sessions of every ticket still in use, as with any long-lived ticket key.

use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(all(feature = "tls-aws-lc-rs", not(feature = "tls-ring")))]
use aws_lc_rs as crypto;
#[cfg(feature = "tls-ring")]
use ring as crypto;

use crypto::{
    aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN},
    rand::{SecureRandom, SystemRandom},
};

use crate::process::TICKET_KEY_LEN as KEY_LEN;
/// How long one period lasts; a ticket lives through its own and the next.
const PERIOD_SECS: u64 = 6 * 3600;

/// A new random key.
pub(crate) fn new_key() -> Option<[u8; KEY_LEN]> {
    let mut k = [0u8; KEY_LEN];
    SystemRandom::new().fill(&mut k).ok()?;
    Some(k)
}

fn period() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / PERIOD_SECS)
}

/// rustls's ticket producer over the shared key.
pub(crate) struct Tickets {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tickets(shared key)")
    }
}

impl Tickets {
    pub(crate) fn new(key: &[u8; KEY_LEN]) -> Option<Tickets> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, key).ok()?;
        Some(Tickets {
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    fn seal(&self, plain: &[u8], period: u64) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(8 + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&period.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(period.to_be_bytes()),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn open(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        if ticket.len() < 8 + NONCE_LEN {
            return None;
        }
        let (p, rest) = ticket.split_at(8);
        let issued = u64::from_be_bytes(p.try_into().ok()?);
        if issued != now && issued.checked_add(1) != Some(now) {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(issued.to_be_bytes()), &mut buf)
            .ok()?;
        Some(plain.to_vec())
    }
}

impl rustls::server::ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        PERIOD_SECS as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, period())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher, period())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_with_the_same_key_in_its_period_and_the_next_only() {
        let key = new_key().unwrap();
        let a = Tickets::new(&key).unwrap();
        let b = Tickets::new(&key).unwrap(); // another generation, the same key
        let t = a.seal(b"session", 100).unwrap();
        assert_eq!(b.open(&t, 100).as_deref(), Some(&b"session"[..]));
        assert_eq!(b.open(&t, 101).as_deref(), Some(&b"session"[..]));
        assert_eq!(b.open(&t, 102), None, "expired");
        assert_eq!(b.open(&t, 99), None, "from the future");
        let other = Tickets::new(&new_key().unwrap()).unwrap();
        assert_eq!(other.open(&t, 100), None, "another key");
        let mut forged = t.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(b.open(&forged, 100), None, "tampered");
        // A ticket's period is authenticated: moving it forward does not extend it.
        let mut moved = t.clone();
        moved[..8].copy_from_slice(&101u64.to_be_bytes());
        assert_eq!(b.open(&moved, 102), None);
        assert_eq!(b.open(&[1, 2, 3], 100), None);
    }
}
