//! The renderer's watch race, forced: a store client that lands a write right after the
//! render's read has been taken and before the renderer can start its watch, every time.
//! The renderer resumes its watch from the index its read saw, so that write is rendered;
//! with the planted bug (`bug_watch_from_now`, confd 0.16's way: watch from whatever the
//! store holds when the watch starts) it is missed, and this test says so.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::inproc::one_member;
use flotilla::client::{inproc::InProc, ClientError, Got, KvClient, SetOpts};
use flotilla::kv::{Event, Precondition};
use flotilla::render::runner::{RenderConfig, Renderer};
use flotilla_shims::{BoxFuture, TokioClock, TokioSpawn};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Delegates to a member, but the first read returns only after `racing` has been
/// written: the read's answer is from before the write, and nothing the renderer does
/// next (starting its watch) can come before it.
struct WriteAfterFirstRead {
    inner: InProc,
    racing: (&'static str, &'static str),
    fired: AtomicBool,
}

impl KvClient for WriteAfterFirstRead {
    fn get(
        &self,
        key: &str,
        recursive: bool,
        quorum: bool,
    ) -> BoxFuture<'_, Result<Option<Got>, ClientError>> {
        let key = key.to_string();
        Box::pin(async move {
            let got = self.inner.get(&key, recursive, quorum).await;
            if !self.fired.swap(true, Ordering::SeqCst) {
                let (k, v) = self.racing;
                self.inner
                    .set(k, v, SetOpts::default())
                    .await
                    .expect("the racing write");
            }
            got
        })
    }

    fn set(
        &self,
        key: &str,
        value: &str,
        opts: SetOpts,
    ) -> BoxFuture<'_, Result<Event, ClientError>> {
        self.inner.set(key, value, opts)
    }

    fn delete(
        &self,
        key: &str,
        recursive: bool,
        prev: Precondition,
    ) -> BoxFuture<'_, Result<Event, ClientError>> {
        self.inner.delete(key, recursive, prev)
    }

    fn watch(
        &self,
        key: &str,
        recursive: bool,
        since: u64,
    ) -> BoxFuture<'_, Result<Event, ClientError>> {
        self.inner.watch(key, recursive, since)
    }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Renders the seed's upstream in watch mode over a store that races it; `Ok` once the
/// racing server is in the file, `Err` with the file if it is not within `within`.
async fn race(bug_watch_from_now: bool, within: Duration) -> Result<(), String> {
    let kv = one_member().await;
    for (k, v) in [("a", "10.0.0.1:80"), ("b", "10.0.0.2:80")] {
        let key = format!("/services/app/{k}");
        kv.set(&key, v, SetOpts::default()).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("app.conf");
    write(
        &dir.path().join("templates/app.tmpl"),
        "{{range getvs \"/services/app/*\"}}server {{.}};\n{{end}}",
    );
    write(
        &dir.path().join("conf.d/app.toml"),
        &format!(
            "[template]\nsrc = \"app.tmpl\"\ndest = {:?}\nkeys = [\"/services/app\"]\n",
            dest.display().to_string()
        ),
    );
    let racing = Arc::new(WriteAfterFirstRead {
        inner: kv,
        racing: ("/services/app/c", "10.0.0.3:80"),
        fired: AtomicBool::new(false),
    });
    let cfg = RenderConfig {
        bug_watch_from_now,
        ..RenderConfig::new(&dir.path().display().to_string())
    };
    let seams = flotilla::cli::confd::real_seams(Arc::new(TokioClock::new()));
    let renderer = Renderer::new(racing.clone(), seams, Arc::new(TokioSpawn), cfg);
    let watching = tokio::spawn(async move { renderer.run_watch().await });
    let end = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < end {
        last = std::fs::read_to_string(&dest).unwrap_or_default();
        if last.contains("server 10.0.0.3:80;") {
            watching.abort();
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watching.abort();
    assert!(
        racing.fired.load(Ordering::SeqCst),
        "the race was never forced"
    );
    Err(format!("the racing write is not in the file: {last:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_between_the_read_and_the_watch_is_rendered() {
    race(false, Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planted_watch_from_now_bug_is_caught() {
    let missed = race(true, Duration::from_secs(3)).await;
    assert!(
        missed.is_err(),
        "a renderer that watches from 'now' rendered the racing write"
    );
}
