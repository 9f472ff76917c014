//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`),
//! for the dashboard's tests and benchmark. Screenshots go to `target/ui-screens/`.

use fantoccini::{Client, ClientBuilder, Locator};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts chromedriver and one headless Chromium session; fails loudly when either
    /// is missing (`scripts/test-all` installs them).
    pub async fn start() -> Self {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: apt-get install chromium chromium-driver (scripts/test-all does)"
            );
        }
        let port = super::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1360,1000"],
            }
        });
        let caps = caps.as_object().cloned().expect("an object");
        let url = format!("http://127.0.0.1:{port}");
        let end = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() > end => panic!("no WebDriver session at {url}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        Self { client, driver }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// The text of the first element `css` matches, or `None`.
    pub async fn text(&self, css: &str) -> Option<String> {
        let e = self.client.find(Locator::Css(css)).await.ok()?;
        e.text().await.ok()
    }

    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map(|v| v.len())
            .unwrap_or(0)
    }

    /// Waits up to `within` for `css`'s text to satisfy `ok`; panics naming what it saw.
    pub async fn until_text(
        &self,
        css: &str,
        within: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let end = Instant::now() + within;
        loop {
            let t = self.text(css).await;
            if let Some(t) = &t {
                if ok(t) {
                    return t.clone();
                }
            }
            if Instant::now() > end {
                self.screenshot("failure").await;
                let lost = self.live_lost().await;
                panic!("{css}: not as expected within {within:?}; last text {t:?}; live stream lost: {lost} (screenshot target/ui-screens/failure.png)");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `within` for `css` to match `n` elements.
    pub async fn until_count(&self, css: &str, n: usize, within: Duration) {
        let end = Instant::now() + within;
        loop {
            let got = self.count(css).await;
            if got == n {
                return;
            }
            if Instant::now() > end {
                self.screenshot("failure").await;
                let lost = self.live_lost().await;
                panic!("{css}: {got} elements, expected {n}, within {within:?}; live stream lost: {lost}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks `css`, finding it again if the live page redrew it in between.
    pub async fn click(&self, css: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let r = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.click().await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => return,
                Err(e) if Instant::now() > end => panic!("click {css}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Types into the field `css` after clearing it (again if the page redrew it).
    pub async fn fill(&self, css: &str, text: &str) {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let r = match self.client.find(Locator::Css(css)).await {
                Ok(e) => match e.clear().await {
                    Ok(()) => e.send_keys(text).await,
                    Err(err) => Err(err),
                },
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => return,
                Err(e) if Instant::now() > end => panic!("fill {css}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Why the page's live stream last broke, if it did (the page records it).
    pub async fn live_lost(&self) -> String {
        let script = "return document.body.dataset.liveLost || 'never'";
        match self.client.execute(script, vec![]).await {
            Ok(v) => v.as_str().unwrap_or_default().to_string(),
            Err(e) => format!("(unknown: {e})"),
        }
    }

    pub async fn screenshot(&self, name: &str) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screens");
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(dir.join(format!("{name}.png")), png);
        }
    }
}
