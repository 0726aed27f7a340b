//! Worker processes' output reaches the cell's log, tagged with the worker id.

mod engine_common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use engine_common::{start, wait_for};
use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("log buffer poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn worker_stderr_is_relayed_with_the_worker_id() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The test runtime is single-threaded: the relay tasks log on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let engine = start(
        "isolate: process\npoolMin: 1\npoolLimit: 1",
        r#"exec: {command: [sh, -c, 'while read -r line; do echo "marker-from-user-code" >&2; echo "{\"end\": true}"; done']}"#,
        None,
    );
    wait_for(&engine, "a ready worker", |i| i.idle_workers == 1).await;
    engine.call(json!(1), None).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        let line = text.lines().find(|l| l.contains("marker-from-user-code"));
        if let Some(line) = line {
            assert!(line.contains("worker=1"), "{line}");
            assert!(line.contains("stream=\"stderr\""), "{line}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not relayed; log so far:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
