//! `wait=true&stream=true`: one response that carries every matching event, a JSON
//! object per event, until the client goes away or falls out of the event window.

use super::{json, Api, Reply};
use crate::kv::StoreError;
use crate::raft::Shared;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Events buffered for a slow stream reader; the writer waits when it is full.
pub const STREAM_EVENTS_BUFFERED: usize = 64;

/// A response body fed by a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

impl Api {
    pub(super) fn stream_watch(
        &self,
        key: String,
        recursive: bool,
        since: Option<u64>,
    ) -> Result<Reply, StoreError> {
        let shared = self.raft.shared.clone();
        let start = shared.machine().store.index();
        let since = since.filter(|i| *i > 0).unwrap_or(start + 1);
        // Refuse a cleared index up front, as a plain error response.
        shared
            .machine()
            .store
            .history()
            .scan(&key, recursive, since, start)?;
        let (tx, rx) = mpsc::channel(STREAM_EVENTS_BUFFERED);
        let clock = self.clock.clone();
        self.spawn.spawn(
            "watch-stream",
            Box::pin(pump(shared, clock, key, recursive, since, tx)),
        );
        let mut r = self.reply(StatusCode::OK, vec![], Some(start));
        *r.body_mut() = ChannelBody(rx).boxed();
        Ok(r)
    }
}

async fn pump(
    shared: Arc<Shared>,
    clock: Arc<dyn flotilla_shims::Clock>,
    key: String,
    recursive: bool,
    mut since: u64,
    tx: mpsc::Sender<Bytes>,
) {
    let watch = shared.watchers.register(&key, recursive);
    shared.store_stats().watchers += 1;
    loop {
        let next = {
            let m = shared.machine();
            m.store
                .history()
                .scan(&key, recursive, since, m.store.index())
                .map(|e| e.cloned())
        };
        let line = match next {
            Ok(Some(ev)) => {
                since = ev.index + 1;
                json::event(&ev, clock.now_wall_ms(), false)
            }
            Ok(None) => {
                tokio::select! {
                    biased;
                    _ = tx.closed() => break,
                    _ = watch.changed() => continue,
                }
            }
            // The reader fell out of the event window: say so and end the stream.
            Err(e) => {
                let _ = tx.send(Bytes::from(json::error(&e))).await;
                break;
            }
        };
        if tx.send(Bytes::from(line)).await.is_err() {
            break;
        }
    }
    let mut st = shared.store_stats();
    st.watchers = st.watchers.saturating_sub(1);
}
