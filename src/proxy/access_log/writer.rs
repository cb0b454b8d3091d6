//! Where access-log lines go: each thread formats its lines into a batch of its own and a
//! background thread (`portcullis-access-log`) writes the batches to the file or stderr,
//! so the request path never waits on the disk.
//!
//! - A thread's batch is a `Mutex<Vec<u8>>` only that thread appends to; it takes it with
//!   `try_lock` and never waits: when the writer happens to be taking the batch at that
//!   instant, the line goes to the writer on its own instead.
//! - A batch that passes [`BATCH`] bytes is handed to the writer through a bounded queue
//!   at once; the writer takes every thread's unfinished batch every [`FLUSH_EVERY`], so a
//!   line is out within about that long even when the gateway goes quiet. With nothing to
//!   write the writer sleeps until the next line wakes it.
//! - Lossy under backpressure, and counted: when the queue is full (the disk cannot keep
//!   up) or a write fails, the batch is dropped and the writer logs how many lines it lost
//!   (a `WARN` at most once a second). Request threads never block on the log.
//! - [`Flush`] (held by `main`) writes out every batch when the gateway exits.

use crate::config::AccessLogFormat;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// A thread's batch is handed to the writer once it holds this many bytes (about 450 JSON
/// lines). Each hand-off wakes the writer thread, which costs both threads a context
/// switch: at 32 KB that was ~1,100 wake-ups a second at 63k lines/s.
const BATCH: usize = 256 * 1024;
/// How often the writer takes the batches that did not fill up: the most a line waits.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Full batches queued for the writer (16 MB) before lines are dropped.
const QUEUE: usize = 64;

/// Where the lines go.
pub enum Output {
    Stderr,
    File(std::fs::File),
}

impl Output {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            // Locked for the whole batch: no other log line lands inside it.
            Output::Stderr => std::io::stderr().write_all(bytes),
            Output::File(f) => f.write_all(bytes),
        }
    }
}

type Batch = Mutex<Vec<u8>>;

enum Msg {
    Batch(Vec<u8>),
    /// A line went into a batch while the writer was asleep.
    Wake,
    /// Write everything out, then say so.
    Stop(std::sync::mpsc::Sender<()>),
}

struct Sink {
    format: AccessLogFormat,
    tx: SyncSender<Msg>,
    /// Every thread's batch (a thread registers its own once, on its first line); kept
    /// until the writer has taken the last lines of a thread that ended.
    batches: Mutex<Vec<Arc<Batch>>>,
    /// The writer sleeps until a line wakes it.
    asleep: AtomicBool,
    /// Lines lost to a full queue or a failed write.
    dropped: AtomicU64,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Whether the access log is on (the writer was started).
pub fn started() -> bool {
    SINK.get().is_some()
}

/// Starts the writer thread; from now on lines are written in `format` to `out`. Once per
/// process (a second call is an error).
pub fn start(out: Output, format: AccessLogFormat) -> std::io::Result<Flush> {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let sink = Sink {
        format,
        tx,
        batches: Mutex::new(Vec::new()),
        asleep: AtomicBool::new(false),
        dropped: AtomicU64::new(0),
    };
    if SINK.set(sink).is_err() {
        return Err(std::io::Error::other("the access log is already started"));
    }
    let sink = SINK.get().expect("just set");
    std::thread::Builder::new()
        .name("portcullis-access-log".into())
        .spawn(move || run(sink, rx, out))?;
    Ok(Flush(()))
}

/// Writes out every line not yet written when dropped (waits for the writer, at most a
/// few seconds).
pub struct Flush(());

impl Drop for Flush {
    fn drop(&mut self) {
        let Some(sink) = SINK.get() else { return };
        let (ack, done) = std::sync::mpsc::channel();
        if sink.tx.send(Msg::Stop(ack)).is_ok() {
            let _ = done.recv_timeout(Duration::from_secs(5));
        }
    }
}

/// This thread's batch (the writer holds it too: what a thread leaves when it ends is
/// taken with the others).
struct Local(Arc<Batch>);

impl Local {
    fn register(sink: &Sink) -> Local {
        let batch = Arc::new(Mutex::new(Vec::with_capacity(BATCH)));
        lock(&sink.batches).push(batch.clone());
        Local(batch)
    }
}

thread_local! {
    static LOCAL: Local = Local::register(SINK.get().expect("the access log is started"));
}

/// Appends a line, which `write` formats, to this thread's batch. Does nothing when the
/// access log is off.
pub fn append(write: impl FnOnce(&mut Vec<u8>, AccessLogFormat)) {
    let Some(sink) = SINK.get() else { return };
    let mut write = Some(write);
    let _ = LOCAL.try_with(|local| {
        let mut batch = match local.0.try_lock() {
            Ok(batch) => batch,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // The writer is taking this batch right now: the line goes on its own below.
            Err(TryLockError::WouldBlock) => return,
        };
        let was_empty = batch.is_empty();
        (write.take().expect("once"))(&mut batch, sink.format);
        if batch.len() >= BATCH {
            let full = std::mem::replace(&mut *batch, Vec::with_capacity(BATCH));
            drop(batch);
            sink.send(full);
        } else if was_empty {
            drop(batch);
            // Read after this thread's lock of its batch: if the writer fell asleep
            // before it, it says so here; if after, its last look saw the line.
            if sink.asleep.load(Ordering::Relaxed) && sink.asleep.swap(false, Ordering::Relaxed) {
                let _ = sink.tx.try_send(Msg::Wake);
            }
        }
    });
    // No batch to append to (the writer holds it, or the thread is ending).
    if let Some(write) = write {
        let mut line = Vec::with_capacity(512);
        write(&mut line, sink.format);
        sink.send(line);
    }
}

impl Sink {
    fn send(&self, batch: Vec<u8>) {
        match self.tx.try_send(Msg::Batch(batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(Msg::Batch(b)) | TrySendError::Disconnected(Msg::Batch(b))) => {
                self.dropped.fetch_add(lines(&b), Ordering::Relaxed);
            }
            Err(_) => unreachable!("a batch was sent"),
        }
    }
}

fn lines(batch: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', batch).count() as u64
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer thread.
fn run(sink: &'static Sink, rx: Receiver<Msg>, out: Output) {
    let mut w = Writer {
        sink,
        out,
        spare: Vec::new(),
        reported: 0,
        last_report: Instant::now(),
        error: None,
    };
    let mut awake = true;
    let mut next = Instant::now() + FLUSH_EVERY;
    loop {
        let msg = if awake {
            match rx.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(msg) => Some(msg),
                Err(_) => return,
            }
        };
        if !awake {
            // Woken by a line: give the others of this moment a flush interval to join it.
            awake = true;
            sink.asleep.store(false, Ordering::Relaxed);
            next = Instant::now() + FLUSH_EVERY;
        }
        match msg {
            Some(Msg::Batch(b)) => w.write(b),
            Some(Msg::Wake) | None => {}
            Some(Msg::Stop(ack)) => {
                // Lines sent after the stop (none once the runtime is down) still count.
                loop {
                    match rx.try_recv() {
                        Ok(Msg::Batch(b)) => w.write(b),
                        Ok(Msg::Stop(other)) => drop(other),
                        Ok(Msg::Wake) => {}
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                w.sweep();
                w.report(true);
                let _ = ack.send(());
                return;
            }
        }
        if Instant::now() >= next {
            if !w.sweep() {
                // Nothing to write: sleep until a line comes — after one more look, since
                // a line may have come in just before `asleep` was set.
                sink.asleep.store(true, Ordering::Relaxed);
                if w.sweep() {
                    sink.asleep.store(false, Ordering::Relaxed);
                } else {
                    awake = false;
                }
            }
            w.report(false);
            next = Instant::now() + FLUSH_EVERY;
        }
    }
}

struct Writer {
    sink: &'static Sink,
    out: Output,
    /// Written batches, emptied, handed back to threads in place of the ones taken.
    spare: Vec<Vec<u8>>,
    /// Dropped lines already reported.
    reported: u64,
    last_report: Instant,
    /// The last write error, for the report.
    error: Option<std::io::Error>,
}

impl Writer {
    fn write(&mut self, mut batch: Vec<u8>) {
        if let Err(e) = self.out.write(&batch) {
            self.sink
                .dropped
                .fetch_add(lines(&batch), Ordering::Relaxed);
            self.error = Some(e);
        }
        if self.spare.len() < 4 && batch.capacity() <= 2 * BATCH {
            batch.clear();
            self.spare.push(batch);
        }
    }

    /// Takes and writes every thread's batch; whether there was anything.
    fn sweep(&mut self) -> bool {
        let mut taken = Vec::new();
        lock(&self.sink.batches).retain(|batch| {
            // Held here alone: its thread has ended, and this takes its last lines.
            let ended = Arc::strong_count(batch) == 1;
            let mut batch = lock(batch);
            if !batch.is_empty() {
                let fresh = if ended {
                    Vec::new()
                } else {
                    self.spare.pop().unwrap_or_default()
                };
                taken.push(std::mem::replace(&mut *batch, fresh));
            }
            !ended
        });
        let any = !taken.is_empty();
        for b in taken {
            self.write(b);
        }
        any
    }

    /// Says how many lines were lost since the last report (at most once a second, or
    /// at the end).
    fn report(&mut self, last: bool) {
        let dropped = self.sink.dropped.load(Ordering::Relaxed);
        if dropped == self.reported
            || (!last && self.last_report.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let why = match self.error.take() {
            Some(e) => format!("writing failed: {e}"),
            None => "the writer could not keep up".to_string(),
        };
        tracing::warn!(
            lines = dropped - self.reported,
            "access log: lines dropped ({why})"
        );
        self.reported = dropped;
        self.last_report = Instant::now();
    }
}
