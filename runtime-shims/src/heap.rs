//! Handing freed heap memory back to the OS (production only).
//!
//! glibc keeps freed memory inside its arenas; with a long-lived store interleaved with
//! short-lived request buffers, the holes add up to a sizeable share of resident memory.
//! `malloc_trim(0)` returns every whole free page to the kernel.

use crate::clock::Clock;
use std::sync::Arc;
use std::time::Duration;

/// Trims the heap every `period`, forever.
pub async fn trim_every(clock: Arc<dyn Clock>, period: Duration) {
    loop {
        clock.sleep(period).await;
        trim();
    }
}

/// Returns free heap pages to the kernel.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
