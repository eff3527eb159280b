//! Stop sequences over streamed text. Text that might be the start of a stop
//! sequence is held back until it is known not to be, so a client never sees
//! any part of a stop string; on a match the text before it is released and
//! generation ends.

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct StopOutput {
    /// Text safe to send now.
    pub emit: String,
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Feeds newly decoded text.
    pub fn push(&mut self, text: &str) -> StopOutput {
        self.pending.push_str(text);
        if self.stops.is_empty() {
            return StopOutput {
                emit: std::mem::take(&mut self.pending),
                stopped: false,
            };
        }
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(pos) = first {
            let emit = self.pending[..pos].to_string();
            self.pending.clear();
            return StopOutput {
                emit,
                stopped: true,
            };
        }
        // Hold back the longest suffix that is a prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in self.pending.char_indices() {
                let suffix = &self.pending[i..];
                if s.starts_with(suffix) {
                    hold = hold.max(suffix.len());
                    break;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let emit = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopOutput {
            emit,
            stopped: false,
        }
    }

    /// Releases held-back text when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_split_across_tokens_is_never_emitted() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("hello E").emit, "hello ");
        assert_eq!(m.push("N").emit, "");
        let out = m.push("D and more");
        assert_eq!(
            out,
            StopOutput {
                emit: String::new(),
                stopped: true
            }
        );
    }

    #[test]
    fn held_text_is_released_when_it_turns_out_not_to_be_a_stop() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("E").emit, "");
        assert_eq!(m.push("x").emit, "Ex");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_text_before_it_is_kept() {
        let mut m = StopMatcher::new(vec!["\n\n".into(), "b".into()]);
        let out = m.push("a\n\nb");
        assert_eq!(
            out,
            StopOutput {
                emit: "a".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn without_stops_everything_passes_through() {
        let mut m = StopMatcher::new(vec![]);
        assert_eq!(m.push("abc").emit, "abc");
        assert_eq!(m.flush(), "");
    }
}
