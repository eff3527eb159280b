//! Counting streamed tokens in an SSE body without buffering it.
//!
//! Each `data:` event of an OpenAI stream carries one token chunk, so the
//! router counts `data:` lines (excluding the final `data: [DONE]`). An
//! event whose JSON starts with `{"error"` is the engine failing in-band
//! after its 200 head: it is counted as an error, not a token (passive
//! health ejects an engine that keeps doing it). Chunks may split a line
//! anywhere; the counter keeps only the first few bytes of the current line
//! across calls.

const KEEP: usize = 24;

/// Incremental `data:` line counter.
#[derive(Clone, Debug, Default)]
pub struct SseCounter {
    head: [u8; KEEP],
    head_len: usize,
    line_len: usize,
    errors: u64,
}

/// What a completed `data:` line was.
#[derive(PartialEq)]
enum Line {
    Token,
    Error,
    Other,
}

impl SseCounter {
    /// Feeds a chunk; returns how many token events completed in it.
    pub fn feed(&mut self, chunk: &[u8]) -> u64 {
        let mut done = 0;
        for &b in chunk {
            if b == b'\n' {
                match self.line() {
                    Line::Token => done += 1,
                    Line::Error => self.errors += 1,
                    Line::Other => {}
                }
                self.head_len = 0;
                self.line_len = 0;
            } else {
                if self.head_len < KEEP {
                    self.head[self.head_len] = b;
                    self.head_len += 1;
                }
                self.line_len += 1;
            }
        }
        done
    }

    /// In-band `{"error": ...}` events seen so far.
    pub fn error_events(&self) -> u64 {
        self.errors
    }

    fn line(&self) -> Line {
        let head = &self.head[..self.head_len];
        let Some(rest) = head.strip_prefix(b"data:") else {
            return Line::Other;
        };
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
        let whole_line_kept = self.line_len <= KEEP;
        if whole_line_kept && rest == b"[DONE]" {
            return Line::Other;
        }
        if let Some(obj) = rest.strip_prefix(b"{") {
            let obj = trim_start(obj);
            if obj.starts_with(b"\"error\"") {
                return Line::Error;
            }
        }
        Line::Token
    }
}

fn trim_start(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"choices\":[{\"text\":\"b\"}]}\n\n: keep-alive\n\ndata: [DONE]\n\n";

    #[test]
    fn counts_data_events_but_not_done_or_comments() {
        assert_eq!(SseCounter::default().feed(STREAM), 2);
    }

    #[test]
    fn counts_the_same_when_chunks_split_lines_anywhere() {
        for size in 1..STREAM.len() {
            let mut c = SseCounter::default();
            let n: u64 = STREAM.chunks(size).map(|ch| c.feed(ch)).sum();
            assert_eq!(n, 2, "chunk size {size}");
        }
    }

    #[test]
    fn in_band_error_events_are_errors_not_tokens_however_the_chunks_split() {
        const FAILING: &[u8] = b"data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"error\":{\"message\":\"step failed\",\"code\":500}}\n\ndata: { \"error\": 1}\n\ndata: [DONE]\n\n";
        for size in 1..FAILING.len() {
            let mut c = SseCounter::default();
            let n: u64 = FAILING.chunks(size).map(|ch| c.feed(ch)).sum();
            assert_eq!((n, c.error_events()), (1, 2), "chunk size {size}");
        }
        let mut c = SseCounter::default();
        c.feed(STREAM);
        assert_eq!(c.error_events(), 0);
    }

    #[test]
    fn crlf_lines_are_handled() {
        assert_eq!(
            SseCounter::default().feed(b"data: x\r\n\r\ndata: [DONE]\r\n\r\n"),
            1
        );
    }
}
