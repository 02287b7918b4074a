//! The access log (`--access-log`): a JSON line per request, as Envoy writes one under
//! Istio's `accessLogFile` with `accessLogEncoding: JSON`, with the fields of Istio's
//! default format where Fulcrum has them, and Fulcrum's own: the cluster and endpoint
//! that answered, the tries it took, and why the proxy answered itself when it did.
//!
//! A line is begun on the worker that serves the request as its head arrives, ended once
//! its answer has, and written by a thread of its own that takes the lines waiting every
//! 50 ms and flushes them: a request never waits for the disk, nor wakes the writer.
//! When the writer falls [`BACKLOG`] lines behind, new lines are dropped and counted
//! (`fulcrum_proxy_access_log_dropped`) rather than held. The file is opened for
//! appending, so a rotation that truncates it in place keeps working; one that moves it
//! away has the proxy reopen its path ([`AccessLog::reopen`], on SIGUSR1, as Envoy
//! reopens its logs).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;

/// Lines waiting for the writer before new ones are dropped.
pub const BACKLOG: usize = 16 * 1024;
/// How often the writer takes the lines waiting: it is not woken per line, which would
/// cost a request more than making its line.
const WRITE_EVERY: Duration = Duration::from_millis(50);

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The proxy's standard output (`-`).
    Stdout,
    /// A file, appended to (created when missing).
    File(PathBuf),
}

impl Destination {
    /// `-` for standard output, else a file's path.
    pub fn parse(text: &str) -> Destination {
        match text {
            "-" => Destination::Stdout,
            path => Destination::File(PathBuf::from(path)),
        }
    }
}

/// The access log's front: lines are handed to its writer thread.
pub struct AccessLog {
    lines: SyncSender<String>,
    dropped: Counter,
    /// Set to have the writer reopen its file before it writes again.
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    /// Opens `destination` and starts the thread writing to it; `dropped` counts the
    /// lines dropped behind a slow writer.
    pub fn open(destination: &Destination, dropped: Counter) -> io::Result<AccessLog> {
        let out = open(destination)?;
        let (lines, waiting) = std::sync::mpsc::sync_channel(BACKLOG);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            destination: destination.clone(),
            out: io::BufWriter::new(out),
            reopen: reopen.clone(),
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(waiting))?;
        Ok(AccessLog {
            lines,
            dropped,
            reopen,
        })
    }

    /// Has the writer open its file again, by its path, before it writes the next lines
    /// (after a rotation moved it away). Nothing for standard output.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Logs `line`, unless the writer is [`BACKLOG`] lines behind (or has stopped).
    pub fn log(&self, line: Line) {
        if self.lines.try_send(line.end()).is_err() {
            self.dropped.inc();
        }
    }
}

/// Where the lines go, opened (a file for appending, created when missing).
fn open(destination: &Destination) -> io::Result<Box<dyn Write + Send>> {
    Ok(match destination {
        Destination::Stdout => Box::new(io::stdout()),
        Destination::File(path) => Box::new(append_to(path)?),
    })
}

fn append_to(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("access log {}: {e}", path.display())))
}

/// The thread writing the lines.
struct Writer {
    destination: Destination,
    out: io::BufWriter<Box<dyn Write + Send>>,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    /// Every [`WRITE_EVERY`], writes the lines `waiting` and flushes them; ends once
    /// every sender is gone, or on a write error (reported once).
    fn run(mut self, waiting: Receiver<String>) {
        loop {
            std::thread::sleep(WRITE_EVERY);
            if let Err(e) = self.reopen_if_asked() {
                tracing::error!("access log: {e}; writing on to the file it had open");
            }
            let mut wrote = false;
            let ended = loop {
                match waiting.try_recv() {
                    Ok(line) => {
                        if let Err(e) = self.out.write_all(line.as_bytes()) {
                            tracing::error!("access log: {e}; no more lines are written");
                            return;
                        }
                        wrote = true;
                    }
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            if wrote && let Err(e) = self.out.flush() {
                tracing::error!("access log: {e}; no more lines are written");
                return;
            }
            if ended {
                return;
            }
        }
    }

    /// Opens the file again by its path when asked to, the lines before written to the
    /// old one.
    fn reopen_if_asked(&mut self) -> io::Result<()> {
        if !self.reopen.swap(false, Ordering::AcqRel) || self.destination == Destination::Stdout {
            return Ok(());
        }
        self.out.flush()?;
        self.out = io::BufWriter::new(open(&self.destination)?);
        Ok(())
    }
}

/// One request's line, a JSON object written a field at a time: those its head says when
/// it arrives, those its answer says when that has ended. Keys are written as given;
/// values are escaped.
#[derive(Debug)]
pub struct Line(String);

impl Default for Line {
    fn default() -> Line {
        Line::new()
    }
}

impl Line {
    pub fn new() -> Line {
        let mut text = String::with_capacity(512);
        text.push('{');
        Line(text)
    }

    fn key(&mut self, key: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push('"');
        self.0.push_str(key);
        self.0.push_str("\":");
    }

    /// `"key":"value"`, or `"key":null`.
    pub fn text(&mut self, key: &str, value: Option<&str>) -> &mut Line {
        self.key(key);
        match value {
            Some(value) => json_string(&mut self.0, value),
            None => self.0.push_str("null"),
        }
        self
    }

    /// `"key":value`, or `"key":null`.
    pub fn number(&mut self, key: &str, value: Option<u64>) -> &mut Line {
        self.key(key);
        match value {
            Some(value) => {
                let _ = write!(self.0, "{value}");
            }
            None => self.0.push_str("null"),
        }
        self
    }

    /// `"key":"2026-11-27T05:16:00.123Z"`: `at` in UTC as RFC 3339 with milliseconds,
    /// as Envoy writes `%START_TIME%`.
    pub fn time(&mut self, key: &str, at: SystemTime) -> &mut Line {
        self.key(key);
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = since.as_secs();
        let (days, of_day) = (seconds / 86_400, seconds % 86_400);
        let (year, month, day) = civil_from_days(days as i64);
        let _ = write!(
            self.0,
            "\"{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z\"",
            of_day / 3600,
            of_day % 3600 / 60,
            of_day % 60,
            since.subsec_millis()
        );
        self
    }

    /// The line, closed and ended.
    pub fn end(mut self) -> String {
        self.0.push_str("}\n");
        self.0
    }
}

/// Writes `value` as a JSON string (RFC 8259 §7).
fn json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The date `days` after 1970-01-01 in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`): year, month 1-12, day 1-31.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_are_rfc3339_in_utc_with_milliseconds() {
        let rfc3339_millis = |at: SystemTime| {
            let mut line = Line::new();
            line.time("t", at);
            let value: serde_json::Value = serde_json::from_str(&line.end()).expect("JSON");
            value["t"].as_str().expect("text").to_string()
        };
        let at = |seconds: u64, millis: u64| {
            UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_millis(millis)
        };
        assert_eq!(rfc3339_millis(at(0, 0)), "1970-01-01T00:00:00.000Z");
        // A leap day, and the last millisecond of a year.
        assert_eq!(
            rfc3339_millis(at(951_782_400, 7)),
            "2000-02-29T00:00:00.007Z"
        );
        assert_eq!(
            rfc3339_millis(at(1_798_761_599, 999)),
            "2026-12-31T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_millis(at(1_795_756_560, 123)),
            "2026-11-27T05:16:00.123Z"
        );
    }

    #[test]
    fn a_line_is_one_json_object_whatever_its_values_hold() {
        let tricky = "a \"quoted\" \\ path\twith\nbreaks, \u{1} and \u{e9}";
        let mut line = Line::new();
        line.text("path", Some(tricky))
            .text("reason", None)
            .number("response_code", Some(404))
            .number("bytes_sent", None);
        let line = line.end();
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "{line}"
        );
        let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(value["path"], tricky);
        assert_eq!(value["reason"], serde_json::Value::Null);
        assert_eq!(value["response_code"], 404);
        assert_eq!(value["bytes_sent"], serde_json::Value::Null);
        assert_eq!(Line::new().end(), "{}\n");
    }

    #[test]
    fn lines_are_appended_and_flushed_while_the_proxy_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        std::fs::write(&path, "kept\n").expect("an earlier line");
        let log =
            AccessLog::open(&Destination::File(path.clone()), Counter::default()).expect("opened");
        for status in [200, 503] {
            let mut line = Line::new();
            line.number("response_code", Some(status));
            log.log(line);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).expect("read");
            if text.lines().count() == 3 {
                assert!(text.starts_with("kept\n"), "{text}");
                assert!(text.contains("\"response_code\":503"), "{text}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not flushed: {text:?}"
            );
            std::thread::yield_now();
        }
    }
}
