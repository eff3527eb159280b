//! Socket helpers for the router's own HTTP/1.1 loop ([`crate::h1_conn`]):
//! the request body read off the client connection, a watch for the client
//! going away, vectored writes, and the connection handed to hyper with the
//! bytes already read in front of it.
//!
//! Everything here works on `&TcpStream` (tokio's readiness API), so the
//! request body, the disconnect watch and the response writer can share the
//! socket inside one task without locks.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::h1::{Decoded, Decoder, WireError};

/// Read at least this much room into a connection buffer at a time.
pub const READ_CHUNK: usize = 16 << 10;

/// Reads once into `buf`: `Ok(0)` at EOF, `WouldBlock` when nothing is there.
pub fn try_read(io: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    io.try_read_buf(buf)
}

/// The request body: what is already in the connection's buffer, or read
/// off the socket as the proxy polls it (under [`crate::upload`]'s limits).
pub enum ReqBody<'a> {
    /// The whole body was in the buffer with the head (or there is none).
    Ready(Option<Bytes>),
    Conn(ConnBody<'a>),
}

/// A `Content-Length` or chunked body still arriving on the connection.
pub struct ConnBody<'a> {
    io: &'a TcpStream,
    buf: &'a mut BytesMut,
    decoder: &'a mut Decoder,
}

impl<'a> ConnBody<'a> {
    /// Reads the body framed by `decoder` from `buf`, then from `io`; the
    /// decoder is the caller's so it can tell afterwards whether the whole
    /// body was read (only then may the connection carry another request).
    pub fn new(io: &'a TcpStream, buf: &'a mut BytesMut, decoder: &'a mut Decoder) -> Self {
        Self { io, buf, decoder }
    }
}

fn chunk_error(e: WireError) -> io::Error {
    let what = match e {
        WireError::Chunk(what) => what,
        _ => "bad framing",
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed chunked request body: {what}"),
    )
}

impl http_body::Body for ReqBody<'_> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let b = match self.get_mut() {
            ReqBody::Ready(data) => return Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ReqBody::Conn(b) => b,
        };
        loop {
            match b.decoder.decode(b.buf) {
                Ok(Decoded::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                Ok(Decoded::Done) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(e) => return Poll::Ready(Some(Err(chunk_error(e)))),
            }
            match try_read(b.io, b.buf) {
                Ok(0) => {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection before the end of the request body",
                    ))))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(b.io.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Ready(d) => d.is_none(),
            ReqBody::Conn(b) => b.decoder.is_done(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ReqBody::Ready(d) => {
                http_body::SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64))
            }
            ReqBody::Conn(b) => match b.decoder.remaining() {
                Some(n) => http_body::SizeHint::with_exact(n),
                None => http_body::SizeHint::default(),
            },
        }
    }
}

/// Resolves when the client has closed its side (EOF) or the connection
/// failed; never resolves once the client has sent more bytes (a pipelined
/// request stays in the socket for the next turn of the loop). Like hyper
/// without half-close, a client that shuts its write side is taken as gone.
pub async fn client_gone(io: &TcpStream) {
    let mut probe = [0u8; 1];
    let seen = poll_fn(|cx| {
        let mut rb = ReadBuf::new(&mut probe);
        io.poll_peek(cx, &mut rb)
    })
    .await;
    match seen {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Writes every byte of `parts`, in order, with vectored writes; waits for
/// the socket only when it is full.
pub async fn write_all(io: &TcpStream, parts: &[&[u8]]) -> io::Result<()> {
    let mut part = 0;
    let mut off = 0;
    loop {
        while part < parts.len() && off >= parts[part].len() {
            part += 1;
            off = 0;
        }
        if part == parts.len() {
            return Ok(());
        }
        let mut slices = [IoSlice::new(&[]); 4];
        let mut n = 0;
        for (i, p) in parts[part..].iter().take(slices.len()).enumerate() {
            slices[i] = IoSlice::new(if i == 0 { &p[off..] } else { p });
            n = i + 1;
        }
        match io.try_write_vectored(&slices[..n]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the client connection accepted no bytes",
                ))
            }
            Ok(mut wrote) => {
                while wrote > 0 {
                    let left = parts[part].len() - off;
                    if wrote >= left {
                        wrote -= left;
                        part += 1;
                        off = 0;
                    } else {
                        off += wrote;
                        wrote = 0;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => io.writable().await?,
            Err(e) => return Err(e),
        }
    }
}

/// The client connection as hyper gets it when the loop hands it over:
/// the bytes the loop already read come first, then the socket.
pub struct Prefixed {
    prefix: BytesMut,
    io: TcpStream,
}

impl Prefixed {
    pub fn new(prefix: BytesMut, io: TcpStream) -> Self {
        Self { prefix, io }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
