//! The header guard: what lapin reads from the socket passes here first, and a message
//! whose header table nests deeper than [`MAX_HEADER_DEPTH`] reaches lapin with that
//! table replaced by one holding only [`DROPPED_HEADERS`].
//!
//! lapin (amq-protocol) parses a header table recursively, several stack frames per
//! level, on its I/O thread: a content header of a few kilobytes of nested arrays — any
//! client may publish one, and RabbitMQ delivers it as sent — overflows that thread's
//! stack and aborts the whole process, again at every redelivery. The guard reads the
//! frame stream (type, channel, size, payload, end byte) as it goes by, looks into each
//! content header frame's `headers` property with an iterative scan, and rewrites only a
//! frame that nests too deeply. Everything else passes through untouched, in place: a
//! content header frame is copied only when a read cut it in two.
//!
//! The guard sits in the runtime kit lapin connects with ([`GuardedKit`]): its TCP
//! streams are [`GuardedStream`]s, and TLS, when on, is set up inside the guarded stream
//! so the guard reads plain frames.

use std::{
    fmt,
    future::Future,
    io::{self, IoSlice, Read, Write},
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, Waker, ready},
    time::{Duration, Instant},
};

use async_rs::{
    Tokio,
    traits::{Executor, Reactor, RuntimeKit},
    util::{DummyIO, Task},
};
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::stream::Stream;

use crate::inbound::{DROPPED_HEADERS, MAX_HEADER_DEPTH};

/// Frame type of a content header.
const CONTENT_HEADER: u8 = 2;
/// Frame header: type (1), channel (2), payload size (4).
const FRAME_HEADER: usize = 7;
/// Bytes read at a time while a frame is held back.
const READ_CHUNK: usize = 16 * 1024;

/// tokio, with TCP streams that guard what lapin reads.
#[derive(Clone, Debug)]
pub(crate) struct GuardedKit(Tokio);

impl GuardedKit {
    /// The kit over the current tokio runtime (what lapin's default runtime is).
    pub(crate) fn current() -> Self {
        Self(Tokio::current())
    }
}

impl Executor for GuardedKit {
    type Task<T: Send + 'static> = <Tokio as Executor>::Task<T>;

    fn block_on<T, F: Future<Output = T>>(&self, f: F) -> T {
        self.0.block_on(f)
    }

    fn spawn<T: Send + 'static, F: Future<Output = T> + Send + 'static>(&self, f: F) -> Task<Self::Task<T>> {
        self.0.spawn(f)
    }

    fn spawn_blocking<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(&self, f: F) -> Task<Self::Task<T>> {
        self.0.spawn_blocking(f)
    }
}

impl Reactor for GuardedKit {
    type TcpStream = GuardedStream;
    type Sleep = <Tokio as Reactor>::Sleep;

    /// lapin never registers raw handles; the guard would not see them.
    fn register<H: Read + Write + Send + 'static>(
        &self,
        _socket: H,
    ) -> io::Result<impl AsyncRead + AsyncWrite + Send + Unpin + 'static> {
        Err::<DummyIO, _>(io::Error::other(
            "raw handles cannot be registered with nameko-rs's guarded AMQP runtime",
        ))
    }

    fn sleep(&self, dur: Duration) -> Self::Sleep {
        self.0.sleep(dur)
    }

    fn interval(&self, dur: Duration) -> impl Stream<Item = Instant> + Send + 'static {
        self.0.interval(dur)
    }

    fn tcp_connect_addr(&self, addr: SocketAddr) -> impl Future<Output = io::Result<GuardedStream>> + Send + 'static {
        let connect = self.0.tcp_connect_addr(addr);
        async move { Ok(GuardedStream::new(Box::pin(connect.await?))) }
    }
}

impl RuntimeKit for GuardedKit {}

/// A byte stream lapin can read and write.
trait Io: AsyncRead + AsyncWrite + Send {}

impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// A connection whose incoming frames pass the guard.
///
/// It also keeps lapin's recovery from hanging on a broken socket. lapin (4.12) keeps
/// its I/O loop waiting for socket events while frames it had serialized are unwritten,
/// and a socket that failed gives none: a connection lost while acknowledgements were
/// on their way was never recovered. So once a read or a write fails (or the peer closed
/// the connection), the stream is dead: writes are swallowed, which lets lapin drop what
/// it meant to send, and the other side's waker is woken so lapin looks again and sees
/// the failure. Nothing is lost by it: the connection is gone either way, and the broker
/// redelivers what was not acknowledged.
pub(crate) struct GuardedStream {
    inner: Pin<Box<dyn Io>>,
    guard: FrameGuard,
    dead: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedStream").finish_non_exhaustive()
    }
}

impl GuardedStream {
    fn new(inner: Pin<Box<dyn Io>>) -> Self {
        Self {
            inner,
            guard: FrameGuard::default(),
            dead: false,
            read_waker: None,
            write_waker: None,
        }
    }

    /// TLS on top of the plain stream, under the guard (which then reads plain frames).
    /// Call it before anything was read.
    #[cfg(feature = "amqp-tls")]
    pub(crate) async fn into_rustls(self, connector: &lapin::tcp::RustlsConnector, domain: &str) -> io::Result<Self> {
        let tls = connector.connect_async(domain, self.inner).await?;
        Ok(Self::new(Box::pin(tls)))
    }

    /// The socket failed or was closed: from now on writes go nowhere, and whoever
    /// waits on the socket is woken to find out.
    fn die(&mut self) {
        if !self.dead {
            self.dead = true;
            for waker in [self.read_waker.take(), self.write_waker.take()].into_iter().flatten() {
                waker.wake();
            }
        }
    }

    /// Reads through the guard, without the dead-socket bookkeeping.
    fn read_guarded(&mut self, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            if let Some(n) = self.guard.hand_out(out) {
                return Poll::Ready(Ok(n));
            }
            if self.guard.holding() {
                // Held bytes start at a frame boundary: read until the frame is whole.
                // The chunk read into is cut off again whatever the read gives: pending,
                // an error, or fewer bytes; only what was read stays held.
                let start = self.guard.held.len();
                self.guard.held.resize(start + READ_CHUNK, 0);
                let read = self.inner.as_mut().poll_read(cx, &mut self.guard.held[start..]);
                let n = match read {
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(error)) => {
                        self.guard.held.truncate(start);
                        return Poll::Ready(Err(error));
                    }
                    Poll::Pending => {
                        self.guard.held.truncate(start);
                        return Poll::Pending;
                    }
                };
                self.guard.held.truncate(start + n);
                if n == 0 {
                    self.guard.flush_held();
                    if let Some(n) = self.guard.hand_out(out) {
                        return Poll::Ready(Ok(n));
                    }
                    return Poll::Ready(Ok(0));
                }
                self.guard.process_held();
                continue;
            }
            let n = ready!(self.inner.as_mut().poll_read(cx, out))?;
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            let keep = self.guard.pass(&out[..n]);
            if keep < n {
                self.guard.hold(&out[keep..n]);
                self.guard.process_held();
            }
            if keep > 0 {
                return Poll::Ready(Ok(keep));
            }
        }
    }

    /// Writes with `write` unless the socket is dead (then the bytes go nowhere); a
    /// failure kills it.
    fn write_with(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        write: impl FnOnce(Pin<&mut dyn Io>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        remember(&mut self.write_waker, cx);
        if self.dead {
            return Poll::Ready(Ok(len));
        }
        let written = ready!(write(self.inner.as_mut(), cx));
        if written.as_ref().is_err_and(fatal) {
            self.die();
        }
        Poll::Ready(written)
    }
}

/// Keeps the waker lapin polls with, to wake it when the socket dies.
fn remember(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|waker| waker.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// Whether an I/O error means the socket is done for.
fn fatal(error: &io::Error) -> bool {
    !matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

impl AsyncRead for GuardedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        remember(&mut this.read_waker, cx);
        let read = ready!(this.read_guarded(cx, out));
        if matches!(&read, Ok(0)) || read.as_ref().is_err_and(fatal) {
            this.die();
        }
        Poll::Ready(read)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_with(cx, buf.len(), |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|buf| buf.len()).sum();
        self.get_mut()
            .write_with(cx, len, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.dead {
            return Poll::Ready(Ok(()));
        }
        this.inner.as_mut().poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().inner.as_mut().poll_close(cx)
    }
}

/// Where the frame stream stands.
#[derive(Debug, Default)]
struct Frames {
    /// Bytes of the current frame still to go by before the next frame starts.
    passthrough: usize,
    /// The server spoke something other than frames (a protocol header refusing our
    /// version): everything passes.
    transparent: bool,
}

/// The frame stream, and what is held back.
#[derive(Debug, Default)]
struct FrameGuard {
    frames: Frames,
    /// Bytes held back, starting at a frame boundary: a frame header not yet whole, or a
    /// content header frame not yet whole or to be rewritten, and what followed it.
    held: Vec<u8>,
    /// Checked bytes to hand to lapin, from `ready_at` on.
    ready: Vec<u8>,
    ready_at: usize,
}

/// Where [`FrameGuard::scan`] stopped.
enum Stop {
    /// Every byte may go through.
    End,
    /// A frame starts at the returned offset and is not whole yet.
    Partial,
    /// A content header frame of this length, at the returned offset, nests too deeply.
    TooDeep(usize),
}

impl FrameGuard {
    fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Copies checked bytes into `out`, if there are any.
    fn hand_out(&mut self, out: &mut [u8]) -> Option<usize> {
        let left = &self.ready[self.ready_at..];
        if left.is_empty() {
            return None;
        }
        let n = left.len().min(out.len());
        out[..n].copy_from_slice(&left[..n]);
        self.ready_at += n;
        if self.ready_at == self.ready.len() {
            self.ready.clear();
            self.ready_at = 0;
        }
        Some(n)
    }

    /// Checks freshly read bytes in place; returns how many may go to lapin now. The
    /// rest must be [`hold`](Self::hold)-ed.
    fn pass(&mut self, data: &[u8]) -> usize {
        match self.frames.scan(data) {
            (_, Stop::End) => data.len(),
            (at, Stop::Partial | Stop::TooDeep(_)) => at,
        }
    }

    fn hold(&mut self, data: &[u8]) {
        self.held.extend_from_slice(data);
    }

    /// Moves what can go from `held` to `ready`, rewriting a frame that nests too
    /// deeply; what stays in `held` is a frame not yet whole.
    fn process_held(&mut self) {
        loop {
            let (at, stop) = self.frames.scan(&self.held);
            match stop {
                Stop::End => {
                    self.ready.append(&mut self.held);
                    return;
                }
                Stop::Partial => {
                    self.ready.extend(self.held.drain(..at));
                    return;
                }
                Stop::TooDeep(len) => {
                    self.ready.extend(self.held.drain(..at));
                    let frame: Vec<u8> = self.held.drain(..len).collect();
                    let rewritten = rewrite(&frame).unwrap_or(frame);
                    self.ready.extend_from_slice(&rewritten);
                }
            }
        }
    }

    /// The connection ended: whatever is held goes to lapin as it is.
    fn flush_held(&mut self) {
        self.ready.append(&mut self.held);
    }
}

impl Frames {
    /// Walks `data`, which starts where the stream stands, frame by frame.
    fn scan(&mut self, data: &[u8]) -> (usize, Stop) {
        let mut pos = 0;
        loop {
            if self.transparent {
                return (data.len(), Stop::End);
            }
            if self.passthrough > 0 {
                let take = self.passthrough.min(data.len() - pos);
                self.passthrough -= take;
                pos += take;
            }
            if pos == data.len() {
                return (pos, Stop::End);
            }
            let rest = &data[pos..];
            if rest.starts_with(b"AMQP") {
                self.transparent = true;
                return (data.len(), Stop::End);
            }
            let Some(header) = rest.get(..FRAME_HEADER) else {
                return (pos, Stop::Partial);
            };
            let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
            let len = FRAME_HEADER + size + 1;
            if header[0] != CONTENT_HEADER {
                self.passthrough = len;
                continue;
            }
            let Some(frame) = rest.get(..len) else {
                return (pos, Stop::Partial);
            };
            if headers_nest_too_deeply(&frame[FRAME_HEADER..FRAME_HEADER + size]) {
                return (pos, Stop::TooDeep(len));
            }
            pos += len;
        }
    }
}

/// Where the `headers` table of a content header payload lies, if it has one.
fn headers_span(payload: &[u8]) -> Option<(usize, usize)> {
    // class id (2), weight (2), body size (8), then property flag words.
    let mut pos = 12;
    let flags = u16::from_be_bytes([*payload.get(pos)?, *payload.get(pos + 1)?]);
    let mut word = flags;
    pos += 2;
    while word & 1 == 1 {
        word = u16::from_be_bytes([*payload.get(pos)?, *payload.get(pos + 1)?]);
        pos += 2;
    }
    if flags & (1 << 13) == 0 {
        return None;
    }
    for bit in [15, 14] {
        // content-type, content-encoding: short strings.
        if flags & (1 << bit) != 0 {
            pos += 1 + usize::from(*payload.get(pos)?);
        }
    }
    let size = u32::from_be_bytes(payload.get(pos..pos + 4)?.try_into().ok()?) as usize;
    let end = pos + 4 + size;
    (end <= payload.len()).then_some((pos, end))
}

fn headers_nest_too_deeply(payload: &[u8]) -> bool {
    headers_span(payload).is_some_and(|(start, end)| nests_deeper_than(&payload[start..end], MAX_HEADER_DEPTH))
}

/// Whether a field table (with its length prefix) holds values nested more than `limit`
/// containers deep. Iterative: the stack holds one end offset per open container and
/// never grows past `limit + 1`. A table it cannot read is not its business (lapin
/// reports it): `false`.
fn nests_deeper_than(table: &[u8], limit: usize) -> bool {
    let read_len = |at: usize| -> Option<usize> {
        table
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(len) = read_len(0) else { return false };
    // (end, is a table)
    let mut open: Vec<(usize, bool)> = vec![(4 + len, true)];
    let mut pos = 4;
    while let Some(&(end, is_table)) = open.last() {
        if pos >= end {
            open.pop();
            continue;
        }
        if is_table {
            let Some(key) = table.get(pos) else { return false };
            pos += 1 + usize::from(*key);
        }
        let Some(&letter) = table.get(pos) else { return false };
        pos += 1;
        let fixed = match letter {
            b'V' => 0,
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'S' | b'x' => {
                let Some(n) = read_len(pos) else { return false };
                4 + n
            }
            b'A' | b'F' => {
                let Some(n) = read_len(pos) else { return false };
                pos += 4;
                if pos + n > end {
                    return false;
                }
                open.push((pos + n, letter == b'F'));
                if open.len() - 1 > limit {
                    return true;
                }
                continue;
            }
            _ => return false,
        };
        pos += fixed;
        if pos > end {
            return false;
        }
    }
    false
}

/// The content header frame with its `headers` table replaced by
/// `{DROPPED_HEADERS: "<why>"}`; `None` if it cannot be read (then it goes as it came).
fn rewrite(frame: &[u8]) -> Option<Vec<u8>> {
    let payload = frame.get(FRAME_HEADER..frame.len() - 1)?;
    let (start, end) = headers_span(payload)?;
    let reason = format!("header values nested more than {MAX_HEADER_DEPTH} levels deep");
    tracing::warn!(
        "a message arrived with {reason}: its headers were replaced by `{DROPPED_HEADERS}` before lapin read them"
    );
    let mut table = Vec::new();
    table.push(u8::try_from(DROPPED_HEADERS.len()).ok()?);
    table.extend_from_slice(DROPPED_HEADERS.as_bytes());
    table.push(b'S');
    table.extend_from_slice(&u32::try_from(reason.len()).ok()?.to_be_bytes());
    table.extend_from_slice(reason.as_bytes());
    let mut new_payload = Vec::with_capacity(start + 4 + table.len() + payload.len() - end);
    new_payload.extend_from_slice(&payload[..start]);
    new_payload.extend_from_slice(&u32::try_from(table.len()).ok()?.to_be_bytes());
    new_payload.extend_from_slice(&table);
    new_payload.extend_from_slice(&payload[end..]);
    let mut out = Vec::with_capacity(FRAME_HEADER + new_payload.len() + 1);
    out.extend_from_slice(&frame[..3]);
    out.extend_from_slice(&u32::try_from(new_payload.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&new_payload);
    out.push(*frame.last()?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use lapin::{protocol::basic::parse_properties, types::AMQPValue};

    use super::*;

    /// A field table `{"deep": [[[...]]]}` nested `depth` arrays deep, as bytes, built
    /// without recursion.
    fn deep_table(depth: usize) -> Vec<u8> {
        // Level `i` (0 outermost) is `A` and the length of the `depth - 1 - i` levels
        // inside it, five bytes each.
        let mut value = Vec::with_capacity(5 * depth);
        for i in 0..depth {
            value.push(b'A');
            value.extend_from_slice(&u32::try_from(5 * (depth - 1 - i)).unwrap().to_be_bytes());
        }
        let mut entry = vec![4, b'd', b'e', b'e', b'p'];
        entry.extend_from_slice(&value);
        let mut table = u32::try_from(entry.len()).unwrap().to_be_bytes().to_vec();
        table.extend_from_slice(&entry);
        table
    }

    /// A content header frame on channel 1 with content type, the given header table
    /// bytes and a correlation id.
    fn content_header(table: &[u8]) -> Vec<u8> {
        let mut payload = vec![0, 60, 0, 0];
        payload.extend_from_slice(&2u64.to_be_bytes());
        // content-type, headers, correlation-id
        payload.extend_from_slice(&((1u16 << 15) | (1 << 13) | (1 << 10)).to_be_bytes());
        payload.push(16);
        payload.extend_from_slice(b"application/json");
        payload.extend_from_slice(table);
        payload.push(3);
        payload.extend_from_slice(b"c-1");
        let mut frame = vec![CONTENT_HEADER, 0, 1];
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(0xCE);
        frame
    }

    fn other_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![kind, 0, 1];
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(0xCE);
        frame
    }

    /// Feeds `stream` to a guard in reads of `chunk` bytes, as lapin would get it.
    fn through_guard(stream: &[u8], chunk: usize) -> Vec<u8> {
        let mut guard = FrameGuard::default();
        let mut out = Vec::new();
        let mut buf = vec![0; chunk];
        let mut hand_out = |guard: &mut FrameGuard, out: &mut Vec<u8>| {
            while let Some(n) = guard.hand_out(&mut buf) {
                out.extend_from_slice(&buf[..n]);
            }
        };
        for read in stream.chunks(chunk) {
            if guard.holding() {
                guard.hold(read);
                guard.process_held();
            } else {
                let keep = guard.pass(read);
                out.extend_from_slice(&read[..keep]);
                if keep < read.len() {
                    guard.hold(&read[keep..]);
                    guard.process_held();
                }
            }
            hand_out(&mut guard, &mut out);
        }
        guard.flush_held();
        hand_out(&mut guard, &mut out);
        out
    }

    /// A socket that has nothing to read every other time it is asked, then at most
    /// `chunk` bytes of `data`.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
        pending: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.pending = !this.pending;
            if this.pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = this.chunk.min(out.len()).min(this.data.len() - this.at);
            out[..n].copy_from_slice(&this.data[this.at..this.at + n]);
            this.at += n;
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What lapin reads from a [`GuardedStream`] over a [`Trickle`] of `stream`.
    fn through_stream(stream: &[u8], chunk: usize, read_size: usize) -> Vec<u8> {
        let mut guarded = GuardedStream::new(Box::pin(Trickle {
            data: stream.to_vec(),
            at: 0,
            chunk,
            pending: false,
        }));
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        let mut buf = vec![0; read_size];
        loop {
            match Pin::new(&mut guarded).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(0)) => return out,
                Poll::Ready(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Poll::Ready(Err(error)) => panic!("read failed: {error}"),
                Poll::Pending => {}
            }
        }
    }

    #[test]
    fn a_socket_with_nothing_to_read_mid_frame_adds_nothing() {
        // A content header cut in two with nothing to read in between: the guard holds
        // the first part and must not keep the room it read into.
        let mut stream = other_frame(1, &[0, 60, 0, 60, 1, 2, 3]);
        stream.extend(content_header(&deep_table(MAX_HEADER_DEPTH)));
        stream.extend(other_frame(3, b"{}"));
        stream.extend(content_header(&deep_table(3)));
        stream.extend(other_frame(3, b"[]"));
        for chunk in [1, 3, 7, 20, 4096] {
            for read_size in [1, 16, 8192] {
                assert_eq!(
                    through_stream(&stream, chunk, read_size),
                    stream,
                    "socket reads of {chunk}, lapin reads of {read_size}"
                );
            }
        }
        let deep = content_header(&deep_table(5_000));
        let mut stream = other_frame(1, &[0, 60, 0, 60]);
        stream.extend(&deep);
        stream.extend(other_frame(3, b"{}"));
        assert_eq!(through_stream(&stream, 100, 8192), through_guard(&stream, 65_536));
    }

    /// A socket whose writes fail with a broken pipe, and whose reads are pending until
    /// then, then fail with a reset.
    #[derive(Default)]
    struct Broken {
        writes: usize,
        broke: bool,
    }

    impl AsyncRead for Broken {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut [u8]) -> Poll<io::Result<usize>> {
            if self.broke {
                Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
            } else {
                Poll::Pending
            }
        }
    }

    impl AsyncWrite for Broken {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.writes += 1;
            this.broke = true;
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Counts its wakes.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_failed_socket_wakes_the_reader_and_swallows_later_writes() {
        use std::sync::{Arc, atomic::Ordering};

        let mut stream = GuardedStream::new(Box::pin(Broken::default()));
        let reads = Arc::new(Wakes::default());
        let writes = Arc::new(Wakes::default());
        let read_waker = Waker::from(Arc::clone(&reads));
        let write_waker = Waker::from(Arc::clone(&writes));
        let mut buf = [0; 64];
        // lapin waits to read; then a write fails.
        assert!(
            Pin::new(&mut stream)
                .poll_read(&mut Context::from_waker(&read_waker), &mut buf)
                .is_pending()
        );
        let mut write_cx = Context::from_waker(&write_waker);
        match Pin::new(&mut stream).poll_write(&mut write_cx, b"ack") {
            Poll::Ready(Err(error)) => assert_eq!(error.kind(), io::ErrorKind::BrokenPipe),
            other => panic!("expected the write's error, got {other:?}"),
        }
        // Both sides are woken: the reader finds the failure, and the writer may drain
        // what it still holds, which goes nowhere (lapin then leaves its I/O loop and
        // reconnects instead of waiting for the dead socket).
        assert_eq!(
            (reads.0.load(Ordering::SeqCst), writes.0.load(Ordering::SeqCst)),
            (1, 1)
        );
        assert!(matches!(
            Pin::new(&mut stream).poll_read(&mut Context::from_waker(&read_waker), &mut buf),
            Poll::Ready(Err(_))
        ));
        assert!(matches!(
            Pin::new(&mut stream).poll_write(&mut write_cx, b"more acks"),
            Poll::Ready(Ok(9))
        ));
        assert!(matches!(
            Pin::new(&mut stream).poll_flush(&mut write_cx),
            Poll::Ready(Ok(()))
        ));
    }

    #[test]
    fn a_closed_socket_wakes_the_writer() {
        use std::sync::{Arc, atomic::Ordering};

        let mut stream = GuardedStream::new(Box::pin(Trickle {
            data: Vec::new(),
            at: 0,
            chunk: 1,
            pending: true,
        }));
        let writes = Arc::new(Wakes::default());
        let write_waker = Waker::from(Arc::clone(&writes));
        let mut write_cx = Context::from_waker(&write_waker);
        assert!(matches!(
            Pin::new(&mut stream).poll_write(&mut write_cx, b"x"),
            Poll::Ready(Ok(1))
        ));
        let mut buf = [0; 8];
        assert!(matches!(
            Pin::new(&mut stream).poll_read(&mut Context::from_waker(Waker::noop()), &mut buf),
            Poll::Ready(Ok(0))
        ));
        assert_eq!(
            writes.0.load(Ordering::SeqCst),
            1,
            "the writer is woken at the end of the stream"
        );
        assert!(matches!(
            Pin::new(&mut stream).poll_write(&mut write_cx, b"frames"),
            Poll::Ready(Ok(6))
        ));
    }

    #[test]
    fn depth_is_counted_without_recursion() {
        assert!(!nests_deeper_than(&deep_table(1), 1));
        assert!(nests_deeper_than(&deep_table(2), 1));
        assert!(!nests_deeper_than(&deep_table(MAX_HEADER_DEPTH), MAX_HEADER_DEPTH));
        assert!(nests_deeper_than(&deep_table(MAX_HEADER_DEPTH + 1), MAX_HEADER_DEPTH));
        // 100,000 levels: what would abort lapin's thread is counted in a few steps.
        assert!(nests_deeper_than(&deep_table(100_000), MAX_HEADER_DEPTH));
        // Truncated or unknown types are lapin's to report.
        assert!(!nests_deeper_than(&deep_table(100)[..50], MAX_HEADER_DEPTH));
        assert!(!nests_deeper_than(&[0, 0, 0, 3, 1, b'k', b'Z'], MAX_HEADER_DEPTH));
    }

    #[test]
    fn ordinary_frames_pass_unchanged_however_they_are_cut() {
        // As deep as allowed: it passes.
        let table = deep_table(MAX_HEADER_DEPTH);
        let mut stream = other_frame(1, &[0, 60, 0, 60, 1, 2, 3]);
        stream.extend(content_header(&table));
        stream.extend(other_frame(3, b"{}"));
        stream.extend(other_frame(8, b""));
        for chunk in [1, 2, 7, 8, 13, 64, 4096] {
            assert_eq!(through_guard(&stream, chunk), stream, "reads of {chunk} bytes");
        }
    }

    #[test]
    fn a_table_nested_too_deeply_is_replaced_and_the_rest_kept() {
        let deep = content_header(&deep_table(5_000));
        let mut stream = other_frame(1, &[0, 60, 0, 60]);
        stream.extend(&deep);
        stream.extend(other_frame(3, b"{}"));
        let mut expected = other_frame(1, &[0, 60, 0, 60]);
        let reason = format!("header values nested more than {MAX_HEADER_DEPTH} levels deep");
        let mut table = vec![u8::try_from(DROPPED_HEADERS.len()).unwrap()];
        table.extend_from_slice(DROPPED_HEADERS.as_bytes());
        table.push(b'S');
        table.extend_from_slice(&u32::try_from(reason.len()).unwrap().to_be_bytes());
        table.extend_from_slice(reason.as_bytes());
        let mut framed = u32::try_from(table.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&table);
        expected.extend(content_header(&framed));
        expected.extend(other_frame(3, b"{}"));
        for chunk in [1, 5, 7, 100, 65_536] {
            assert_eq!(through_guard(&stream, chunk), expected, "reads of {chunk} bytes");
        }
        // lapin reads the rewritten properties: content type and correlation id kept.
        let frame = content_header(&framed);
        let (_, properties) =
            parse_properties(&frame[FRAME_HEADER + 12..frame.len() - 1]).expect("properties lapin reads");
        assert_eq!(
            properties.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(properties.correlation_id().as_ref().map(|s| s.as_str()), Some("c-1"));
        let headers = properties.headers().as_ref().expect("headers");
        let dropped = headers.inner().get(DROPPED_HEADERS).expect("the marker");
        assert!(matches!(dropped, AMQPValue::LongString(s) if s.as_bytes() == reason.as_bytes()));
    }

    #[test]
    fn a_protocol_header_from_the_server_turns_the_guard_off() {
        let mut stream = b"AMQP\x00\x00\x09\x01".to_vec();
        stream.extend(content_header(&deep_table(10)));
        assert_eq!(through_guard(&stream, 3), stream);
    }
}
