//! The opt-in `consumer_id` label of `gateway_http_requests_total` (`[metrics] consumer_label`),
//! with a cardinality cap: the first `consumer_label_limit` distinct consumers seen get their
//! own value, every later one is counted as `other`, so a large consumer list cannot blow up
//! the scrape or Prometheus' memory. Admission is first come, first kept, for the process'
//! life (a reload does not reshuffle series). Only asked when a worker meets a label set it
//! has not cached yet, never per request.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
};

use super::LabelValue;

/// The value for consumers beyond the cap.
pub const OTHER: &str = "other";

#[derive(Debug)]
pub struct ConsumerLabels {
    limit: usize,
    admitted: Mutex<HashSet<Arc<str>>>,
}

impl ConsumerLabels {
    pub fn new(limit: usize) -> Self {
        ConsumerLabels { limit, admitted: Mutex::default() }
    }

    /// The label value for a consumer id: itself while within the cap, `other` beyond it, and
    /// empty for requests without a consumer (open routes, tokens of no `[[consumers]]` entry).
    pub fn value(&self, consumer_id: Option<&Arc<str>>) -> LabelValue {
        let Some(id) = consumer_id else { return LabelValue::Static("") };
        let mut admitted = self.admitted.lock().unwrap_or_else(PoisonError::into_inner);
        if admitted.contains(id) || admitted.len() < self.limit && admitted.insert(id.clone()) {
            LabelValue::Shared(id.clone())
        } else {
            LabelValue::Static(OTHER)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_beyond_the_cap_are_other() {
        let labels = ConsumerLabels::new(2);
        let id = |s: &str| -> Arc<str> { s.into() };
        assert_eq!(labels.value(Some(&id("a"))), LabelValue::Shared(id("a")));
        assert_eq!(labels.value(Some(&id("b"))), LabelValue::Shared(id("b")));
        assert_eq!(labels.value(Some(&id("c"))), LabelValue::Static(OTHER));
        // Admitted ones keep their value (a reload's new Arc included); anonymous is empty.
        assert_eq!(labels.value(Some(&id("a"))), LabelValue::Shared(id("a")));
        assert_eq!(labels.value(None), LabelValue::Static(""));
    }
}
