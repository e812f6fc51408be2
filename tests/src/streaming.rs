//! A client for the CRI streaming server's websocket protocol
//! (`v4.channel.k8s.io`), the one kubectl's websocket transport speaks, for
//! the URL an Attach answers: each binary message starts with its channel
//! (0 stdin, 1 stdout, 2 stderr, 3 the server's error), the data follows.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const PROTOCOL: &str = "v4.channel.k8s.io";
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;

/// One streaming session (an attach).
#[derive(Debug)]
pub struct ChannelStream {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl ChannelStream {
    /// Opens the session at `url`, the `http://` URL CRI answered.
    pub async fn connect(url: &str) -> Self {
        let ws_url = url.replacen("http://", "ws://", 1);
        let mut request = ws_url
            .as_str()
            .into_client_request()
            .unwrap_or_else(|err| panic!("streaming URL {url}: {err}"));
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .unwrap_or_else(|err| panic!("connecting to {url}: {err}"));
        Self { ws }
    }

    /// Sends `data` on stdin.
    pub async fn send_stdin(&mut self, data: &[u8]) {
        let mut message = vec![STDIN];
        message.extend_from_slice(data);
        self.ws
            .send(Message::Binary(message.into()))
            .await
            .expect("sending stdin");
    }

    /// What arrives on `channel` until it holds `needle`; panics after
    /// `timeout` with what arrived on every channel.
    pub async fn read_until(&mut self, channel: u8, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen: [Vec<u8>; 4] = Default::default();
        loop {
            let text = String::from_utf8_lossy(&seen[channel as usize]).into_owned();
            if text.contains(needle) {
                return text;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, self.ws.next()).await;
            let message = match next {
                Ok(Some(Ok(message))) => message,
                other => panic!(
                    "no {needle:?} on channel {channel} ({other:?}); seen: {:?}",
                    seen.iter()
                        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                        .collect::<Vec<_>>()
                ),
            };
            if let Message::Binary(data) = message
                && let Some((&from, rest)) = data.split_first()
                && let Some(buffer) = seen.get_mut(from as usize)
            {
                buffer.extend_from_slice(rest);
            }
        }
    }

    /// Closes the session.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
