//! The server's log writes, off the threads that serve requests.
//!
//! Every exchange logs one line. Written where it is formatted, that line costs a `write`
//! system call on an HTTP worker (and the stderr lock) per request, and a log reader that falls
//! behind stalls the workers themselves. Here lines are appended to a bounded buffer and one
//! thread writes whatever has gathered, at most once per [`LINGER`] under load and at once
//! after a quiet spell. Nothing is dropped: a full buffer makes the logging thread wait, as a
//! blocked stderr always did. Lines still buffered when the process dies abruptly are lost; a
//! panic and the end of [`LogSink::spawn`]'s guard write them out first.
//!
//! tracing-appender's non-blocking writer was the first choice, but it writes each line with a
//! system call of its own (or drops lines when its queue is full), which is the cost this
//! removes.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Most bytes waiting to be written before a logging thread waits for room.
const CAPACITY: usize = 1 << 20;

/// How long the writer lets lines gather after a write.
const LINGER: Duration = Duration::from_millis(2);

type Output = Box<dyn Write + Send>;

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    /// The writer waits for lines (an append must wake it).
    idle: bool,
    /// The guard was dropped: appends go straight to the output.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when lines arrive for an idle writer, or at close.
    lines: Condvar,
    /// Signalled when the writer took the buffer.
    room: Condvar,
    out: Mutex<Output>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn out(&self) -> MutexGuard<'_, Output> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lines leave in the order they were logged: whoever takes bytes from the buffer takes the
    /// output before letting go of the buffer (lock order: state, then output).
    fn write_out(mut out: MutexGuard<'_, Output>, pending: &[u8], more: &[u8]) {
        // Nowhere left to report a failed log write.
        let _ = out
            .write_all(pending)
            .and_then(|()| out.write_all(more))
            .and_then(|()| out.flush());
    }

    fn append(&self, bytes: &[u8]) {
        let mut st = self.state();
        while !st.closed && !st.buf.is_empty() && st.buf.len() + bytes.len() > CAPACITY {
            st = self.room.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if st.closed {
            let pending = std::mem::take(&mut st.buf);
            let out = self.out();
            drop(st);
            Self::write_out(out, &pending, bytes);
            return;
        }
        st.buf.extend_from_slice(bytes);
        if st.idle {
            st.idle = false;
            self.lines.notify_one();
        }
    }

    /// Writes what is buffered now, on the calling thread. From the panic hook it gives up
    /// rather than wait (the panicking thread may hold a lock).
    fn flush_now(&self, wait: bool) {
        let (mut st, out) = if wait {
            let st = self.state();
            (st, self.out())
        } else {
            let (Ok(st), Ok(out)) = (self.state.try_lock(), self.out.try_lock()) else {
                return;
            };
            (st, out)
        };
        let pending = std::mem::take(&mut st.buf);
        drop(st);
        self.room.notify_all();
        Self::write_out(out, &pending, &[]);
    }

    fn run(&self) {
        let mut spare = Vec::new();
        loop {
            let mut st = self.state();
            while st.buf.is_empty() && !st.closed {
                st.idle = true;
                st = self.lines.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            st.idle = false;
            if st.buf.is_empty() {
                return;
            }
            std::mem::swap(&mut st.buf, &mut spare);
            let closed = st.closed;
            let out = self.out();
            drop(st);
            self.room.notify_all();
            Self::write_out(out, &spare, &[]);
            spare.clear();
            // Keep a large buffer from staying allocated after a burst.
            spare.shrink_to(64 * 1024);
            if !closed {
                std::thread::sleep(LINGER);
            }
        }
    }

    fn close(&self) {
        self.state().closed = true;
        self.lines.notify_one();
        self.room.notify_all();
    }
}

/// A [`MakeWriter`] whose lines a background thread writes to the output.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

/// Writes out the remaining lines and stops the writer when dropped; appends after that go
/// straight to the output.
pub struct FlushGuard {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.close();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        self.shared.flush_now(true);
    }
}

impl LogSink {
    /// Starts the writer thread for `out`, and writes the buffer out before any panic message.
    pub fn spawn(out: impl Write + Send + 'static) -> io::Result<(LogSink, FlushGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            lines: Condvar::new(),
            room: Condvar::new(),
            out: Mutex::new(Box::new(out)),
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || shared.run())?
        };
        let on_panic = Arc::downgrade(&shared);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(s) = on_panic.upgrade() {
                s.flush_now(false);
            }
            previous(info);
        }));
        Ok((
            LogSink {
                shared: Arc::clone(&shared),
            },
            FlushGuard {
                shared,
                writer: Some(writer),
            },
        ))
    }
}

/// One event's output: tracing's formatter writes each line with one `write_all`.
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.append(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(&self.shared)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::mpsc;

    use super::*;

    /// An output that hands every write to the test and can be held shut; `entered` says a
    /// write has begun (and is stuck while the gate is held).
    struct Probe {
        writes: mpsc::Sender<Vec<u8>>,
        entered: mpsc::Sender<()>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Probe {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let _ = self.entered.send(());
            let _open = self.gate.lock().unwrap();
            self.writes.send(b.to_vec()).unwrap();
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Setup {
        sink: LogSink,
        guard: FlushGuard,
        writes: mpsc::Receiver<Vec<u8>>,
        entered: mpsc::Receiver<()>,
        gate: Arc<Mutex<()>>,
    }

    fn setup() -> Setup {
        let (tx, writes) = mpsc::channel();
        let (etx, entered) = mpsc::channel();
        let gate = Arc::new(Mutex::new(()));
        let (sink, guard) = LogSink::spawn(Probe {
            writes: tx,
            entered: etx,
            gate: Arc::clone(&gate),
        })
        .unwrap();
        Setup {
            sink,
            guard,
            writes,
            entered,
            gate,
        }
    }

    fn log(sink: &LogSink, line: &[u8]) {
        sink.make_writer().write_all(line).unwrap();
    }

    #[test]
    fn a_line_after_a_quiet_spell_is_written_without_waiting_for_more() {
        let t = setup();
        log(&t.sink, b"one\n");
        // Blocks until the writer wrote it: no later line, flush or guard is needed.
        assert_eq!(t.writes.recv().unwrap(), b"one\n");
    }

    #[test]
    fn lines_that_gather_while_the_output_is_busy_go_out_in_one_write_in_order() {
        let t = setup();
        let held = t.gate.lock().unwrap();
        log(&t.sink, b"first\n");
        t.entered.recv().unwrap();
        for i in 0..100 {
            log(&t.sink, format!("line {i}\n").as_bytes());
        }
        drop(held);
        drop(t.guard);
        // The guard joined the writer: every write has been made.
        let writes: Vec<Vec<u8>> = t.writes.try_iter().collect();
        assert_eq!(
            writes,
            [
                b"first\n".to_vec(),
                (0..100)
                    .map(|i| format!("line {i}\n"))
                    .collect::<String>()
                    .into_bytes()
            ]
        );
    }

    #[test]
    fn a_full_buffer_makes_the_logger_wait_and_loses_nothing() {
        let t = setup();
        let held = t.gate.lock().unwrap();
        let line = vec![b'y'; 1000];
        let lines = 3 * CAPACITY / line.len();
        let logger = {
            let sink = t.sink.clone();
            let line = line.clone();
            std::thread::spawn(move || {
                for _ in 0..lines {
                    log(&sink, &line);
                }
            })
        };
        // The writer is stuck in its first write; the logger fills the buffer and must stop
        // there: it has more to log than the buffer holds.
        t.entered.recv().unwrap();
        while t.sink.shared.state().buf.len() + line.len() <= CAPACITY {
            std::thread::yield_now();
        }
        assert!(!logger.is_finished());
        assert!(t.sink.shared.state().buf.len() <= CAPACITY);
        drop(held);
        logger.join().unwrap();
        drop(t.guard);
        let total: usize = t.writes.try_iter().map(|w| w.len()).sum();
        assert_eq!(total, lines * line.len());
    }

    #[test]
    fn a_line_logged_while_the_writer_stops_comes_after_the_buffered_ones() {
        let t = setup();
        let held = t.gate.lock().unwrap();
        log(&t.sink, b"a\n");
        t.entered.recv().unwrap();
        log(&t.sink, b"b\n");
        let guard = t.guard;
        let closer = std::thread::spawn(move || drop(guard));
        while !t.sink.shared.state().closed {
            std::thread::yield_now();
        }
        // "b" still waits in the buffer while the writer is stuck on "a"; "c" may not pass it.
        let late = {
            let sink = t.sink.clone();
            std::thread::spawn(move || log(&sink, b"c\n"))
        };
        drop(held);
        late.join().unwrap();
        closer.join().unwrap();
        let all: Vec<u8> = t.writes.try_iter().flatten().collect();
        assert_eq!(String::from_utf8(all).unwrap(), "a\nb\nc\n");
    }

    #[test]
    fn lines_after_the_guard_go_straight_out() {
        let t = setup();
        drop(t.guard);
        log(&t.sink, b"late\n");
        assert_eq!(t.writes.try_recv().unwrap(), b"late\n");
    }
}
