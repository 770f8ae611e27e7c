//! A TCP proxy on loopback that a test steers: it can stall every connection through it
//! ([`pause`](Proxy::pause): bytes stop flowing both ways, sockets stay open, as with a
//! silently stalled network path), cut them ([`cut`](Proxy::cut)), and send new ones to
//! another upstream ([`set_upstream`](Proxy::set_upstream), as a load balancer does). It can
//! also answer one path itself ([`Proxy::with_page`]), so a browser loads a test page from
//! the same origin as the servers behind it.
//!
//! Every task ends when the proxy is dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

struct Shared {
    upstream: Mutex<SocketAddr>,
    paused: watch::Sender<bool>,
    /// Cancelled to cut the connections open now; replaced by a fresh one for later ones.
    cut: Mutex<CancellationToken>,
    /// A path prefix answered here, and the whole response.
    page: Option<(String, Vec<u8>)>,
    stop: CancellationToken,
}

/// See the [module documentation](self).
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

impl Proxy {
    /// A proxy to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        Self::launch(upstream, None).await
    }

    /// A proxy to `upstream` that answers a `GET` of a path starting with `prefix` itself,
    /// with `html` (and closes that connection, so it is never reused for the upstream).
    pub async fn with_page(upstream: SocketAddr, prefix: &str, html: &str) -> Proxy {
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{html}",
            html.len()
        );
        Self::launch(
            upstream,
            Some((format!("GET {prefix}"), response.into_bytes())),
        )
        .await
    }

    async fn launch(upstream: SocketAddr, page: Option<(String, Vec<u8>)>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            paused: watch::Sender::new(false),
            cut: Mutex::new(stop.child_token()),
            page,
            stop: stop.clone(),
        });
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = s.stop.cancelled() => return,
                };
                let Ok((client, _)) = accepted else { continue };
                let cut = s.cut.lock().unwrap().clone();
                tokio::spawn(connection(s.clone(), client, cut));
            }
        });
        Proxy {
            addr,
            shared,
            _stop: stop.drop_guard(),
        }
    }

    /// Where new connections go from now on.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }

    /// Stalls every connection, open and new: nothing is forwarded until [`resume`].
    ///
    /// [`resume`]: Proxy::resume
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Lets bytes flow again.
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Closes every connection open now; later ones are not affected.
    pub fn cut(&self) {
        let mut cut = self.shared.cut.lock().unwrap();
        cut.cancel();
        *cut = self.shared.stop.child_token();
    }
}

/// Waits while the proxy is paused; `false` if the connection was cut meanwhile.
async fn unpaused(paused: &mut watch::Receiver<bool>, cut: &CancellationToken) -> bool {
    tokio::select! {
        r = paused.wait_for(|p| !*p) => r.is_ok(),
        _ = cut.cancelled() => false,
    }
}

async fn connection(shared: Arc<Shared>, mut client: TcpStream, cut: CancellationToken) {
    let mut paused = shared.paused.subscribe();
    if !unpaused(&mut paused, &cut).await {
        return;
    }
    let mut first = Vec::new();
    if let Some((request_line, response)) = &shared.page {
        // Read up to the end of the request line (bounded) to tell where it goes.
        let mut byte = [0u8; 1];
        while !first.ends_with(b"\r\n") && first.len() < 8192 {
            match client.read(&mut byte).await {
                Ok(1) => first.push(byte[0]),
                _ => return,
            }
        }
        if first.starts_with(request_line.as_bytes()) {
            let mut rest = [0u8; 4096];
            while !first.windows(4).any(|w| w == b"\r\n\r\n") && first.len() < 65536 {
                match client.read(&mut rest).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => first.extend_from_slice(&rest[..n]),
                }
            }
            let _ = client.write_all(response).await;
            let _ = client.shutdown().await;
            return;
        }
    }
    let upstream = *shared.upstream.lock().unwrap();
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    if server.write_all(&first).await.is_err() {
        return;
    }
    let (mut a, mut b) = (vec![0u8; 16384], vec![0u8; 16384]);
    loop {
        if !unpaused(&mut paused, &cut).await {
            return;
        }
        // What was read is written only once the proxy is not paused: a read may have
        // completed just before a pause, but nothing is forwarded after `pause` returns.
        tokio::select! {
            n = client.read(&mut a) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if !unpaused(&mut paused, &cut).await || server.write_all(&a[..n]).await.is_err() {
                        return;
                    }
                }
            },
            n = server.read(&mut b) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if !unpaused(&mut paused, &cut).await || client.write_all(&b[..n]).await.is_err() {
                        return;
                    }
                }
            },
            _ = paused.changed() => {}
            _ = cut.cancelled() => return,
        }
    }
}
