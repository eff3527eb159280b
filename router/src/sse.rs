//! Counting streamed tokens in an SSE body without buffering it.
//!
//! Each `data:` event of an OpenAI stream carries one token chunk, so the
//! router counts `data:` lines (excluding the final `data: [DONE]`). Chunks
//! may split a line anywhere; the counter keeps only the first few bytes of
//! the current line across calls.

const KEEP: usize = 16;

/// Incremental `data:` line counter.
#[derive(Clone, Debug, Default)]
pub struct SseCounter {
    head: [u8; KEEP],
    head_len: usize,
    line_len: usize,
}

impl SseCounter {
    /// Feeds a chunk; returns how many data events completed in it.
    pub fn feed(&mut self, chunk: &[u8]) -> u64 {
        let mut done = 0;
        for &b in chunk {
            if b == b'\n' {
                if self.is_data_event() {
                    done += 1;
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

    fn is_data_event(&self) -> bool {
        let head = &self.head[..self.head_len];
        let Some(rest) = head.strip_prefix(b"data:") else {
            return false;
        };
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
        let whole_line_kept = self.line_len <= KEEP;
        !(whole_line_kept && rest == b"[DONE]")
    }
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
    fn crlf_lines_are_handled() {
        assert_eq!(
            SseCounter::default().feed(b"data: x\r\n\r\ndata: [DONE]\r\n\r\n"),
            1
        );
    }
}
