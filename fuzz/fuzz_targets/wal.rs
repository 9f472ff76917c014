//! WAL segments: a data dir whose log holds any bytes opens to an error or a state (the
//! node refuses a damaged log; it never panics on one).
#![no_main]
use flotilla_shims::Disk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let Ok(mut disk) = flotilla_shims::wal_disk::WalDisk::open(dir.path()) else {
        return;
    };
    drop(disk.load());
    drop(disk);
    // Overwrite the first segment with the input and open again.
    let Ok(entries) = std::fs::read_dir(dir.path()) else {
        return;
    };
    for e in entries.flatten() {
        if e.path().is_file() {
            let _ = std::fs::write(e.path(), data);
        }
    }
    if let Ok(mut disk) = flotilla_shims::wal_disk::WalDisk::open(dir.path()) {
        let _ = disk.load();
    }
});
