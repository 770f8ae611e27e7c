//! Headless Chromium for the browser tests, started as the machine's notes say.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

/// The Chromium binary; `scripts/test.sh` installs it (through `scripts/compat-clients.sh`).
pub fn path() -> PathBuf {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        let path = PathBuf::from(candidate);
        if path.exists() {
            return path;
        }
    }
    panic!("headless Chromium is required: run `bash scripts/test.sh`, which installs it");
}

/// Opens `url` in a headless Chromium with a profile of its own (`profile`, under the
/// temporary directory, with this process's id), killed when the handle is dropped. Returns
/// the browser and its profile directory, for the caller to remove once it has stopped.
pub fn open(profile: &str, url: &str) -> (Child, PathBuf) {
    let profile = std::env::temp_dir().join(format!("{profile}-{}", std::process::id()));
    let child = Command::new(path())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    (child, profile)
}
