//! Reading the client's request body: bounded in size, in time, and in the
//! memory all bodies being read may hold together.
//!
//! The router must see the whole body before it can route (the model name
//! is inside), so bodies are buffered. Three bounds keep slow or large
//! uploads from taking the replica down (issue 13, fault 3): the caller
//! holds a unit of the global concurrency cap before reading starts; the
//! bytes held by all buffered bodies come from one [`BodyBudget`] (a request
//! that would exceed it gets 503 + Retry-After at once, never a wait); and
//! the whole body must arrive before a deadline (408 otherwise). A body
//! announced larger than the limit is refused before a byte of it is read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ProxyError;
use crate::limits::ThrottleReason;

/// The bytes all request bodies being buffered may hold together.
#[derive(Clone, Debug)]
pub struct BodyBudget {
    sem: Arc<Semaphore>,
    gauge: Gauge,
}

/// Bytes of the budget held until dropped.
#[derive(Debug)]
pub struct BudgetHold {
    permits: Vec<OwnedSemaphorePermit>,
    bytes: usize,
    gauge: Gauge,
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes as i64);
    }
}

impl BudgetHold {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl BodyBudget {
    /// A budget of `bytes` (clamped to what a semaphore can count); `gauge`
    /// shows the bytes held.
    pub fn new(bytes: usize, gauge: Gauge) -> Self {
        Self {
            sem: Arc::new(Semaphore::new(bytes.clamp(1, Semaphore::MAX_PERMITS))),
            gauge,
        }
    }

    fn empty_hold(&self) -> BudgetHold {
        BudgetHold {
            permits: Vec::new(),
            bytes: 0,
            gauge: self.gauge.clone(),
        }
    }

    /// Adds `n` bytes to `hold`, or refuses without waiting.
    fn grow(&self, hold: &mut BudgetHold, n: usize) -> Result<(), ProxyError> {
        if n == 0 {
            return Ok(());
        }
        let over = || ProxyError::Overloaded {
            retry_after_secs: 1,
            reason: ThrottleReason::BodyBudget,
        };
        let n32 = u32::try_from(n).map_err(|_| over())?;
        let permit = self
            .sem
            .clone()
            .try_acquire_many_owned(n32)
            .map_err(|_| over())?;
        hold.permits.push(permit);
        hold.bytes += n;
        self.gauge.inc_by(n as i64);
        Ok(())
    }
}

/// Reading (and dropping) at most this much of a refused body.
const DISCARD_MAX_BYTES: usize = 16 << 20;
/// ... for at most this long.
const DISCARD_MAX_TIME: Duration = Duration::from_secs(2);

/// Reads and drops what the client is still sending of a body refused as
/// too large, for a little while, so it gets to read the 413: closing a
/// socket with unread input resets the connection, and the client would see
/// a reset instead of the answer. Holds no memory; bounded in bytes and time.
async fn discard<B>(body: &mut B, deadline: Instant)
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let until = deadline.min(Instant::now() + DISCARD_MAX_TIME);
    let mut seen = 0usize;
    let drain = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(d) = frame.into_data() {
                seen += d.len();
                if seen > DISCARD_MAX_BYTES {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout_at(until.into(), drain).await;
}

/// A request body read in full, with the budget it holds.
#[derive(Debug)]
pub struct Buffered {
    pub bytes: Bytes,
    pub hold: BudgetHold,
}

/// What bounds one read.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Largest body (413 beyond).
    pub max_bytes: usize,
    /// When the whole body must have arrived (408 after).
    pub deadline: Instant,
    /// The read time allowed, for the error message.
    pub timeout: Duration,
}

/// Reads `body` (announced as `content_length`, if it was) under `limits`
/// and `budget`.
pub async fn read<B>(
    body: B,
    content_length: Option<u64>,
    limits: ReadLimits,
    budget: &BodyBudget,
) -> Result<Buffered, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let too_large = || ProxyError::BodyTooLarge {
        limit: limits.max_bytes,
    };
    let mut hold = budget.empty_hold();
    let mut body = body;
    let expected = match content_length {
        Some(n) if n > limits.max_bytes as u64 => {
            discard(&mut body, limits.deadline).await;
            return Err(too_large());
        }
        Some(n) => Some(n as usize),
        None => None,
    };
    if let Some(n) = expected {
        // Reserve the whole announced body up front: a body that could not
        // finish within the budget is refused before it holds anything.
        if let Err(e) = budget.grow(&mut hold, n) {
            discard(&mut body, limits.deadline).await;
            return Err(e);
        }
    }
    let read = async {
        // Most bodies arrive in one frame: that frame is kept as is, no copy.
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ProxyError::BodyUnreadable(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if data.is_empty() {
                continue;
            }
            let have = first.as_ref().map_or(0, Bytes::len) + buf.len();
            if have + data.len() > limits.max_bytes {
                drop((first, buf));
                discard(&mut body, limits.deadline).await;
                return Err(too_large());
            }
            if first.is_none() && buf.is_empty() {
                if expected.is_none() {
                    budget.grow(&mut hold, data.len())?;
                }
                first = Some(data);
                continue;
            }
            match first.take() {
                Some(f) => {
                    buf.reserve(expected.unwrap_or(0).max(f.len() + data.len()));
                    buf.extend_from_slice(&f);
                }
                None => buf.reserve(data.len()),
            }
            let held = hold.bytes;
            if expected.is_none() && buf.capacity() > held {
                // Without a Content-Length, hold what the buffer really takes.
                budget.grow(&mut hold, buf.capacity() - held)?;
            }
            buf.extend_from_slice(&data);
        }
        Ok(first.unwrap_or_else(|| buf.freeze()))
    };
    let result = {
        let mut read = std::pin::pin!(read);
        // Small bodies usually came with the headers: no timer for those.
        match futures::poll!(read.as_mut()) {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => {
                match tokio::time::timeout_at(limits.deadline.into(), read).await {
                    Ok(r) => r,
                    Err(_) => Err(ProxyError::BodyTimeout(limits.timeout)),
                }
            }
        }
    };
    let bytes = result?;
    Ok(Buffered { bytes, hold })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use futures::stream;

    fn limits(max: usize) -> ReadLimits {
        ReadLimits {
            max_bytes: max,
            deadline: Instant::now() + Duration::from_secs(5),
            timeout: Duration::from_secs(5),
        }
    }

    fn chunked(parts: &[&'static [u8]]) -> Body {
        Body::from_stream(stream::iter(
            parts
                .iter()
                .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn a_body_is_read_whole_and_its_bytes_are_held_until_dropped() {
        let gauge = Gauge::default();
        let budget = BodyBudget::new(1000, gauge.clone());
        let b = read(chunked(&[b"abc", b"def"]), None, limits(100), &budget)
            .await
            .expect("read");
        assert_eq!(&b.bytes[..], b"abcdef");
        assert!(gauge.get() >= 6);
        drop(b);
        assert_eq!(gauge.get(), 0);
        let b = read(Body::from("xyz"), Some(3), limits(100), &budget)
            .await
            .expect("read");
        assert_eq!((&b.bytes[..], gauge.get()), (&b"xyz"[..], 3));
    }

    #[tokio::test]
    async fn announced_or_actual_size_over_the_limit_is_413() {
        let budget = BodyBudget::new(1 << 20, Gauge::default());
        let e = read(Body::empty(), Some(101), limits(100), &budget)
            .await
            .expect_err("announced too large");
        assert!(matches!(e, ProxyError::BodyTooLarge { .. }));
        let e = read(
            chunked(&[&[b'x'; 60], &[b'y'; 60]]),
            None,
            limits(100),
            &budget,
        )
        .await
        .expect_err("too large");
        assert!(matches!(e, ProxyError::BodyTooLarge { .. }));
    }

    #[tokio::test]
    async fn bodies_beyond_the_budget_are_refused_at_once_not_queued() {
        let gauge = Gauge::default();
        let budget = BodyBudget::new(100, gauge.clone());
        let held = read(Body::from(vec![b'a'; 80]), Some(80), limits(1000), &budget)
            .await
            .expect("fits");
        let e = read(Body::from(vec![b'b'; 30]), Some(30), limits(1000), &budget)
            .await
            .expect_err("over budget");
        assert!(matches!(e, ProxyError::Overloaded { .. }), "{e:?}");
        assert_eq!(gauge.get(), 80, "a refused body holds nothing");
        drop(held);
        assert!(
            read(Body::from(vec![b'b'; 30]), Some(30), limits(1000), &budget)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_by_the_deadline_is_408() {
        let budget = BodyBudget::new(1 << 20, Gauge::default());
        let slow = Body::from_stream(stream::once(async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, std::io::Error>(Bytes::from_static(b"late"))
        }));
        let l = ReadLimits {
            max_bytes: 100,
            deadline: Instant::now() + Duration::from_millis(50),
            timeout: Duration::from_millis(50),
        };
        let e = read(slow, Some(4), l, &budget).await.expect_err("timeout");
        assert!(matches!(e, ProxyError::BodyTimeout(_)));
    }
}
