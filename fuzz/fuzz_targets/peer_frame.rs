//! Peer frames: a connection's bytes (hello, then length-prefixed frames) read to frames
//! or an error, never a panic and never an allocation beyond the frame bound.
#![no_main]
use flotilla_shims::wire::FrameReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut r = FrameReader::new(data, 4096);
        if r.read_hello().await.is_err() {
            return;
        }
        while let Ok(Some(_)) = r.read_frame().await {}
    });
});
