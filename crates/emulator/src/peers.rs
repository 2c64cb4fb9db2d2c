//! Fault injection for servers: peers that send requests and never read the answers, to check
//! that a server (the agent, the emulator's own endpoints) takes their connections' slots
//! back.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

/// `n` connections to `addr`, each sending `request` over and over (at most 40,000 times, for
/// at most 60 s) and never reading: each socket has a 4 KiB receive window, so the answers
/// back up into the server at once. Dropping it closes them.
#[derive(Debug)]
pub struct NeverReading(Vec<JoinHandle<()>>);

impl NeverReading {
    /// Opens the `n` connections (plain TCP) and starts their writers.
    pub async fn connect(addr: SocketAddr, n: usize, request: &str) -> std::io::Result<Self> {
        let mut writers = Vec::with_capacity(n);
        for _ in 0..n {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_recv_buffer_size(4096)?;
            let mut stream = socket.connect(addr).await?;
            let request = request.as_bytes().to_vec();
            writers.push(tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(60), async {
                    for _ in 0..40_000 {
                        if stream.write_all(&request).await.is_err() {
                            return;
                        }
                    }
                    // Done writing: hold the connection, still reading nothing.
                    std::future::pending::<()>().await;
                })
                .await;
            }));
        }
        Ok(NeverReading(writers))
    }

    /// Whether, within `within`, a GET of `url` (with `client`, whose own timeout bounds each
    /// try) fails: the server has no slot left for another connection.
    pub async fn refuse_others(
        &self,
        client: &reqwest::Client,
        url: &str,
        within: Duration,
    ) -> bool {
        tokio::time::timeout(within, async {
            while client.get(url).send().await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .is_ok()
    }
}

/// The status of the first GET of `url` that is answered within `within` (tried every
/// 200 ms), if one is.
pub async fn first_answer(client: &reqwest::Client, url: &str, within: Duration) -> Option<u16> {
    tokio::time::timeout(within, async {
        loop {
            if let Ok(r) = client.get(url).send().await {
                return r.status().as_u16();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .ok()
}

impl Drop for NeverReading {
    fn drop(&mut self) {
        for w in &self.0 {
            w.abort();
        }
    }
}
