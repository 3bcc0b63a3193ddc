//! The dedup policy: which operations are deduplicated and by which key (`Core(dedup_ttl=...,
//! dedup_events=...)`). The set that remembers keys is `dedup::DedupSet`; this module only decides
//! what goes into it, from the op's parts (no pyo3), so the rules are tested here.

use crate::dedup::{hash, hash_parts};
use crate::error::CoreError;
use crate::json::py_repr;
use crate::ops::Subject;
use crate::ulid;

/// How events are deduplicated (`Core(dedup_events=...)`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EventDedup {
    /// By the caller's event id (a fresh id cannot repeat, so only a caller-supplied one counts).
    Id,
    /// By customer + action + name + encoded data.
    Composite,
    Off,
}

impl EventDedup {
    pub fn parse(value: &str) -> Result<Self, CoreError> {
        Ok(match value {
            "id" => EventDedup::Id,
            "composite" => EventDedup::Composite,
            "off" => EventDedup::Off,
            other => {
                return Err(CoreError::config(format!(
                    "dedup_events: {} is not one of 'id', 'composite', 'off'",
                    py_repr(other)
                )))
            }
        })
    }
}

/// The dedup settings the builders need; `enabled` is false when `dedup_ttl` is 0.
#[derive(Clone, Copy, Debug)]
pub struct DedupPolicy {
    pub enabled: bool,
    pub events: EventDedup,
}

/// The key/value to check and record for one operation, and which counter a hit goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupEntry {
    pub key: u64,
    pub value: u64,
    pub identify: bool,
}

/// The subject's identifier kind and value, hashed into dedup keys (so `7` and `"7"` agree, and
/// an anonymous id never matches a customer id).
fn subject_parts(subject: Subject<'_>) -> [&[u8]; 2] {
    match subject {
        Subject::Id(id) => [b"id", id.as_bytes()],
        Subject::CioId(id) => [b"cio_id", id.as_bytes()],
        Subject::Anonymous(id) => [b"anonymous_id", id.as_bytes()],
    }
}

/// The identify dedup key of a person: the same person as Customer.io addresses them.
pub fn identify_key(subject: Subject<'_>) -> u64 {
    let [kind, id] = subject_parts(subject);
    hash_parts(&[b"identify", kind, id])
}

impl DedupPolicy {
    /// Same person + same encoded attributes => nothing new to say.
    pub fn identify_entry(&self, subject: Subject<'_>, attributes: &[u8]) -> Option<DedupEntry> {
        self.enabled.then(|| DedupEntry {
            key: identify_key(subject),
            value: hash(attributes),
            identify: true,
        })
    }

    /// The entry of an event. `caller_id` is the id the caller gave (None when a fresh one was
    /// made: checking or recording it would only crowd the set); `data` the encoded attributes.
    pub fn event_entry(
        &self,
        subject: Subject<'_>,
        action: &str,
        name: &str,
        caller_id: Option<&[u8]>,
        data: Option<&[u8]>,
    ) -> Option<DedupEntry> {
        if !self.enabled {
            return None;
        }
        let key = match (self.events, caller_id) {
            (EventDedup::Id, Some(id)) => {
                // A ULID is sent upper-cased (its canonical form): dedup ignores case.
                let mut upper = [0u8; ulid::LEN];
                let upper = match upper.get_mut(..id.len()) {
                    Some(slot) => {
                        slot.copy_from_slice(id);
                        slot.make_ascii_uppercase();
                        &*slot
                    }
                    None => id,
                };
                hash_parts(&[b"event-id", upper])
            }
            (EventDedup::Composite, _) => {
                let [kind, id] = subject_parts(subject);
                let data: &[u8] = data.unwrap_or(b"-");
                hash_parts(&[b"event", kind, id, action.as_bytes(), name.as_bytes(), data])
            }
            _ => return None,
        };
        Some(DedupEntry {
            key,
            value: 0,
            identify: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: DedupPolicy = DedupPolicy {
        enabled: true,
        events: EventDedup::Id,
    };

    #[test]
    fn policy_parse_names_the_choices() {
        assert_eq!(
            EventDedup::parse("composite").unwrap(),
            EventDedup::Composite
        );
        let err = EventDedup::parse("ids").unwrap_err();
        assert_eq!(err.kind, crate::error::ErrorKind::Config);
        assert!(err.message.starts_with("dedup_events: 'ids'"), "{err}");
    }

    #[test]
    fn identify_entry_keys_by_person_and_values_by_attributes() {
        let a = ON.identify_entry(Subject::Id("7"), b"{\"a\":1}").unwrap();
        let b = ON.identify_entry(Subject::Id("7"), b"{\"a\":2}").unwrap();
        let anon = ON
            .identify_entry(Subject::Anonymous("7"), b"{\"a\":1}")
            .unwrap();
        assert!(a.identify);
        assert_eq!(a.key, b.key);
        assert_ne!(a.value, b.value);
        assert_ne!(
            a.key, anon.key,
            "an anonymous id never matches a customer id"
        );
        let off = DedupPolicy {
            enabled: false,
            ..ON
        };
        assert_eq!(off.identify_entry(Subject::Id("7"), b"{}"), None);
    }

    #[test]
    fn event_entry_by_id_ignores_case_and_skips_fresh_ids() {
        let id = b"01ARZ3NDEKTSV4RRFFQ69G5FAV";
        let lower = b"01arz3ndektsv4rrffq69g5fav";
        let subject = Subject::Id("u");
        let upper_entry = ON.event_entry(subject, "event", "n", Some(id), None);
        let lower_entry = ON.event_entry(subject, "event", "n", Some(lower), None);
        assert!(upper_entry.is_some());
        assert_eq!(upper_entry, lower_entry);
        assert_eq!(ON.event_entry(subject, "event", "n", None, None), None);
    }

    #[test]
    fn composite_event_entry_covers_subject_name_and_data() {
        let policy = DedupPolicy {
            enabled: true,
            events: EventDedup::Composite,
        };
        let key = |subject, name, data| {
            policy
                .event_entry(subject, "event", name, None, data)
                .unwrap()
                .key
        };
        let base = key(Subject::Id("u"), "n", Some(&b"{}"[..]));
        assert_eq!(base, key(Subject::Id("u"), "n", Some(&b"{}"[..])));
        assert_ne!(base, key(Subject::Id("v"), "n", Some(&b"{}"[..])));
        assert_ne!(base, key(Subject::Id("u"), "m", Some(&b"{}"[..])));
        assert_ne!(base, key(Subject::Id("u"), "n", None));
    }
}
