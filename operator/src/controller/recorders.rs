//! Event recorders, one per distinct message.
//!
//! kube's `Recorder` folds every event with the same type, reason, action
//! and object into one series and keeps the *first* note: a second
//! `RevisionPromoted` for another revision would only bump the count of the
//! first, and `kubectl describe` would show the old revision's words
//! (`revision A is ready and stable (x2)` after B was promoted). Here each
//! (object, reason, message) gets its own recorder, so identical events
//! still fold into a series and a different message is an event of its own.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::Client;

/// Distinct messages remembered before the map starts again (a recorder's
/// own cache keeps a series for 6 minutes; past this many messages an old
/// series just starts anew).
const MAX_KEYS: usize = 2048;

type Key = (Option<String>, String, Option<String>);

/// Recorders by (object uid, reason, note).
pub struct Recorders {
    client: Client,
    reporter: Reporter,
    by_note: Mutex<HashMap<Key, Recorder>>,
}

impl Recorders {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            by_note: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes `event` about `reference` through the recorder of its
    /// message.
    pub async fn publish(
        &self,
        event: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = (
            reference.uid.clone(),
            event.reason.clone(),
            event.note.clone(),
        );
        let recorder = {
            // A poisoned lock only means another publish panicked; the map
            // is still usable.
            let mut map = self
                .by_note
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if map.len() >= MAX_KEYS && !map.contains_key(&key) {
                map.clear();
            }
            map.entry(key)
                .or_insert_with(|| Recorder::new(self.client.clone(), self.reporter.clone()))
                .clone()
        };
        recorder.publish(event, reference).await
    }
}
