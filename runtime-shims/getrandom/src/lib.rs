//! The getrandom 0.2 API, filled through libc's `getrandom(3)`.
//!
//! # Layout
//! - [`getrandom`]: fill a buffer (retries on `EINTR`, loops on short reads).
//! - [`Error`]: the error type rand_core 0.6 expects (`code`, `raw_os_error`, `From<NonZeroU32>`).
//! - [`seed_thread`]: a test hook — this thread's entropy comes from a seeded generator
//!   instead (turmoil runs a whole cluster on one thread; this makes raft-rs's election
//!   jitter, drawn through `thread_rng()`, replay from a seed there too).

use std::cell::Cell;

thread_local! {
    static SEEDED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// From now on, on this thread only, fill from a splitmix64 stream seeded with `seed`
/// (`None`: back to libc). Use a fresh thread per seeded run: `thread_rng()` seeds itself
/// once per thread.
pub fn seed_thread(seed: Option<u64>) {
    SEEDED.with(|s| s.set(seed));
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn fill_seeded(dest: &mut [u8]) -> bool {
    SEEDED.with(|s| {
        let Some(mut state) = s.get() else {
            return false;
        };
        for chunk in dest.chunks_mut(8) {
            let v = splitmix64(&mut state).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        s.set(Some(state));
        true
    })
}

use core::fmt;
use core::num::NonZeroU32;

#[derive(Copy, Clone, Eq, PartialEq)]
pub struct Error(NonZeroU32);

impl Error {
    pub const UNSUPPORTED: Error = Error::internal(0);
    pub const ERRNO_NOT_POSITIVE: Error = Error::internal(1);
    pub const INTERNAL_START: u32 = 1 << 31;
    pub const CUSTOM_START: u32 = (1 << 31) + (1 << 30);

    const fn internal(n: u32) -> Error {
        match NonZeroU32::new(Self::INTERNAL_START + n) {
            Some(c) => Error(c),
            None => panic!("internal error codes are non-zero"),
        }
    }

    pub fn raw_os_error(self) -> Option<i32> {
        (self.0.get() < Self::INTERNAL_START).then_some(self.0.get() as i32)
    }

    pub const fn code(self) -> NonZeroU32 {
        self.0
    }
}

impl From<NonZeroU32> for Error {
    fn from(code: NonZeroU32) -> Self {
        Error(code)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "getrandom::Error({})", self.0)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.raw_os_error() {
            Some(errno) => write!(f, "getrandom failed: OS error {errno}"),
            None => write!(f, "getrandom failed: internal error {}", self.0),
        }
    }
}

impl std::error::Error for Error {}

fn last_errno() -> Error {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    match u32::try_from(errno).ok().and_then(NonZeroU32::new) {
        Some(code) => Error(code),
        None => Error::ERRNO_NOT_POSITIVE,
    }
}

/// Fills `dest` with random bytes from libc's `getrandom`.
pub fn getrandom(dest: &mut [u8]) -> Result<(), Error> {
    if fill_seeded(dest) {
        return Ok(());
    }
    let mut filled = 0;
    while filled < dest.len() {
        let rest = &mut dest[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = last_errno();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_seeded_thread_replays() {
        let draw = || {
            std::thread::spawn(|| {
                super::seed_thread(Some(42));
                let mut b = [0u8; 20];
                super::getrandom(&mut b).unwrap();
                b
            })
            .join()
            .unwrap()
        };
        assert_eq!(draw(), draw());
    }

    #[test]
    fn fills_whole_buffers() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        super::getrandom(&mut a).unwrap();
        super::getrandom(&mut b).unwrap();
        assert_ne!(a, b, "two draws of 64 random bytes are equal");
    }
}
