//! Container logs in the kubelet's layout and the CRI log format:
//! `<state>/pods/<ns>_<pod>_<uid>/<container>/<restartCount>.log`, one line per output
//! line: `<RFC 3339 nano timestamp> <stdout|stderr> <F|P> <text>`. The API server's
//! `pods/log` reads these files directly ([`read`], [`files`]).

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};

/// Longest line written as one entry; longer lines are split into `P` (partial) entries.
const MAX_LINE: usize = 16 * 1024;

pub fn pod_dir(state_dir: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    state_dir
        .join("pods")
        .join(format!("{namespace}_{name}_{uid}"))
}

pub fn log_path(pod_dir: &Path, container: &str, restart_count: i32) -> PathBuf {
    pod_dir.join(container).join(format!("{restart_count}.log"))
}

/// Copies `stream` into `file` as CRI entries tagged `tag` (`stdout`/`stderr`).
pub async fn copy(
    stream: impl AsyncRead + Unpin,
    tag: &'static str,
    file: std::sync::Arc<std::sync::Mutex<std::fs::File>>,
) {
    use std::io::Write as _;
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let complete = buf.ends_with(b"\n");
        let text = if complete { &buf[..n - 1] } else { &buf[..n] };
        let stamp = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%fZ");
        let mut line = format!("{stamp} {tag} {} ", if complete { 'F' } else { 'P' }).into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        if let Ok(mut f) = file.lock() {
            let _ = f.write_all(&line);
        }
    }
}

use tokio::io::AsyncReadExt as _;

/// One parsed CRI entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub timestamp: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub text: &'a str,
}

pub fn parse(line: &str) -> Option<Entry<'_>> {
    let mut parts = line.splitn(4, ' ');
    let timestamp = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or("");
    Some(Entry {
        timestamp,
        stream,
        partial: tag == "P",
        text,
    })
}

/// The restart counts with a log file for `container`, ascending.
pub fn files(pod_dir: &Path, container: &str) -> Vec<i32> {
    let mut counts: Vec<i32> = std::fs::read_dir(pod_dir.join(container))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
        .collect();
    counts.sort_unstable();
    counts
}

/// Options of `GET pods/<name>/log` that shape the text.
#[derive(Debug, Default, Clone, Copy)]
pub struct Shape {
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    /// Only entries at or after this time (RFC 3339, compared as instants).
    pub since: Option<jiff::Timestamp>,
}

/// Renders CRI `content` as `kubectl logs` shows it.
pub fn render(content: &str, shape: Shape) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut pending = String::new();
    for entry in content.lines().filter_map(parse) {
        if let Some(since) = shape.since
            && entry
                .timestamp
                .parse::<jiff::Timestamp>()
                .is_ok_and(|t| t < since)
        {
            continue;
        }
        if pending.is_empty() && shape.timestamps {
            pending.push_str(entry.timestamp);
            pending.push(' ');
        }
        pending.push_str(entry.text);
        if !entry.partial {
            pending.push('\n');
            lines.push(std::mem::take(&mut pending));
        }
    }
    if !pending.is_empty() {
        lines.push(pending);
    }
    let skip = shape
        .tail_lines
        .map_or(0, |n| lines.len().saturating_sub(n));
    lines[skip..].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_and_renders_cri_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = log_path(dir.path(), "c", 0);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file =
            std::sync::Arc::new(std::sync::Mutex::new(std::fs::File::create(&path).unwrap()));
        copy(&b"one\ntwo\nthree"[..], "stdout", file.clone()).await;
        copy(&b"oops\n"[..], "stderr", file).await;
        let content = std::fs::read_to_string(&path).unwrap();
        let first = parse(content.lines().next().unwrap()).unwrap();
        assert_eq!(first.stream, "stdout");
        assert_eq!(first.text, "one");
        assert!(first.timestamp.parse::<jiff::Timestamp>().is_ok());
        assert_eq!(render(&content, Shape::default()), "one\ntwo\nthreeoops\n");
        let tail = render(
            &content,
            Shape {
                tail_lines: Some(1),
                ..Default::default()
            },
        );
        assert_eq!(tail, "threeoops\n");
        let stamped = render(
            &content,
            Shape {
                timestamps: true,
                ..Default::default()
            },
        );
        assert!(stamped.starts_with(first.timestamp), "{stamped}");
        assert_eq!(files(dir.path(), "c"), [0]);
        assert!(files(dir.path(), "absent").is_empty());
    }
}
