//! The dedup policy: which operations are deduplicated and by which key (`Core(dedup_ttl=...,
//! dedup_events=...)`). The set that remembers keys is `dedup::DedupSet`; this module only decides
//! what goes into it, from the op's parts (no pyo3), so the rules are tested here.

use crate::dedup::{hash, hash_parts};
use crate::error::CoreError;
use crate::json::py_repr;
use crate::op_scan::{self, Member};
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

/// A person action after which an identify equal to the last one must be sent again: a delete or a
/// suppress (which deletes) re-creates the person, and an unsuppress lifts the refusal of the
/// identifies sent while suppressed. `Core.person` and a raw op's intake both go by it.
pub fn ends_identify(action: &str) -> bool {
    matches!(action, "delete" | "suppress" | "unsuppress")
}

/// A subject read back from an op: which identifier, and its text.
#[derive(Clone, Copy)]
enum Kind {
    Id,
    CioId,
    Anonymous,
}

fn subject(kind: Kind, text: &str) -> Subject<'_> {
    match kind {
        Kind::Id => Subject::Id(text),
        Kind::CioId => Subject::CioId(text),
        Kind::Anonymous => Subject::Anonymous(text),
    }
}

/// The person an identifiers object (or a merge's `primary`/`secondary`) names, keyed as intake
/// keys them: `id` (an email keys like an id: a workspace that identifies by email sends it as the
/// customer id) or `cio_id`.
fn person_named(object: &[u8]) -> Option<(Kind, String)> {
    let members = op_scan::members(object)?;
    [
        ("id", Kind::Id),
        ("cio_id", Kind::CioId),
        ("email", Kind::Id),
        ("anonymous_id", Kind::Anonymous),
    ]
    .into_iter()
    .find_map(|(key, kind)| Some((kind, op_scan::scalar_text(op_scan::get(&members, key)?)?)))
}

/// An op's members, its action, if it is a person op (events are person ops with an event action).
fn person_op(op: &[u8]) -> Option<(Vec<Member<'_>>, String)> {
    let members = op_scan::members(op)?;
    if op_scan::decode_string(op_scan::get(&members, "type")?)? != "person" {
        return None;
    }
    let action = op_scan::decode_string(op_scan::get(&members, "action")?)?;
    Some((members, action))
}

impl DedupPolicy {
    /// The keys intake recorded for an op that will now never be delivered (it failed for good): forgotten,
    /// so that sending it again is not taken for a duplicate of something Customer.io never got.
    /// An identify's person key; an event's key as `event_entry` made it (a fresh id's key was never
    /// recorded, and forgetting it changes nothing).
    pub fn keys_of_lost(&self, op: &[u8]) -> Vec<u64> {
        if !self.enabled {
            return Vec::new();
        }
        let Some((members, action)) = person_op(op) else {
            return Vec::new();
        };
        // A top-level anonymous_id: an event written by an older build (replayed from a spool).
        let named = || match op_scan::get(&members, "anonymous_id") {
            Some(raw) => Some((Kind::Anonymous, op_scan::scalar_text(raw)?)),
            None => person_named(op_scan::get(&members, "identifiers")?),
        };
        let key = match action.as_str() {
            "identify" => named().map(|(kind, text)| identify_key(subject(kind, &text))),
            "event" | "page" | "screen" => named().and_then(|(kind, text)| {
                let name = op_scan::decode_string(op_scan::get(&members, "name")?)?;
                let id = op_scan::get(&members, "id").and_then(op_scan::decode_string);
                let data = op_scan::get(&members, "attributes");
                let entry = self.event_entry(
                    subject(kind, &text),
                    &action,
                    &name,
                    id.as_ref().map(|id| id.as_bytes()),
                    data,
                )?;
                Some(entry.key)
            }),
            _ => None,
        };
        key.into_iter().collect()
    }

    /// The identify keys a raw op ends (a delete, suppress or unsuppress of a person, a merge of
    /// two): after it, an identify equal to the last one must be sent, to re-create the person (as
    /// `Core.person` does for the same actions).
    pub fn keys_ended_by_raw(&self, op: &[u8]) -> Vec<u64> {
        if !self.enabled {
            return Vec::new();
        }
        let Some((members, action)) = person_op(op) else {
            return Vec::new();
        };
        let people: &[&str] = match action.as_str() {
            "merge" => &["primary", "secondary"],
            action if ends_identify(action) => &["identifiers"],
            _ => &[],
        };
        people
            .iter()
            .filter_map(|member| person_named(op_scan::get(&members, member)?))
            .map(|(kind, text)| identify_key(subject(kind, &text)))
            .collect()
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

    #[test]
    fn a_lost_op_gives_back_the_key_intake_recorded_for_it() {
        let composite = DedupPolicy {
            enabled: true,
            events: EventDedup::Composite,
        };
        let id = b"01ARZ3NDEKTSV4RRFFQ69G5FAV";
        let identify = br#"{"type":"person","identifiers":{"id":"u\"1"},"action":"identify","attributes":{"a":1},"timestamp":5}"#;
        assert_eq!(
            ON.keys_of_lost(identify),
            [ON.identify_entry(Subject::Id("u\"1"), b"{}").unwrap().key]
        );
        let cio = br#"{"type":"person","identifiers":{"cio_id":"c9"},"action":"identify","attributes":{}}"#;
        assert_eq!(ON.keys_of_lost(cio), [identify_key(Subject::CioId("c9"))]);
        let event = br#"{"type":"person","identifiers":{"id":"7"},"action":"page","name":"/caf\u00e9","id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","timestamp":5,"attributes":{"x":[1,2]}}"#;
        let by_id = ON
            .event_entry(Subject::Id("7"), "page", "/café", Some(id), None)
            .unwrap();
        assert_eq!(ON.keys_of_lost(event), [by_id.key]);
        let by_content = composite
            .event_entry(
                Subject::Id("7"),
                "page",
                "/café",
                None,
                Some(&br#"{"x":[1,2]}"#[..]),
            )
            .unwrap();
        assert_eq!(composite.keys_of_lost(event), [by_content.key]);
        let anonymous = br#"{"type":"person","identifiers":{"anonymous_id":"v1"},"action":"event","name":"n","id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","timestamp":5}"#;
        let anonymous_key = composite
            .event_entry(Subject::Anonymous("v1"), "event", "n", None, None)
            .unwrap();
        assert_eq!(composite.keys_of_lost(anonymous), [anonymous_key.key]);
        let older_build = br#"{"type":"person","anonymous_id":"v1","action":"event","name":"n","id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","timestamp":5}"#;
        assert_eq!(composite.keys_of_lost(older_build), [anonymous_key.key]);
        // Nothing recorded, nothing to give back: other actions, other types, unreadable bytes, dedup off.
        for op in [&br#"{"type":"person","identifiers":{"id":"7"},"action":"delete"}"#[..],
                   br#"{"type":"object","identifiers":{"object_type_id":"1","object_id":"a"},"action":"identify"}"#,
                   b"not json"] {
            assert!(ON.keys_of_lost(op).is_empty(), "{:?}", String::from_utf8_lossy(op));
        }
        let off = DedupPolicy {
            enabled: false,
            ..ON
        };
        assert!(off.keys_of_lost(identify).is_empty());
    }

    #[test]
    fn raw_deletes_and_merges_end_the_identify_keys_of_their_people() {
        let delete = br#"{"type":"person","identifiers":{"id":7},"action":"delete"}"#;
        assert_eq!(
            ON.keys_ended_by_raw(delete),
            [identify_key(Subject::Id("7"))]
        );
        let suppress = br#"{"type":"person","identifiers":{"cio_id":"c9"},"action":"suppress"}"#;
        assert_eq!(
            ON.keys_ended_by_raw(suppress),
            [identify_key(Subject::CioId("c9"))]
        );
        let merge = br#"{"type":"person","action":"merge","primary":{"id":"new"},"secondary":{"email":"old@x.io"}}"#;
        assert_eq!(
            ON.keys_ended_by_raw(merge),
            [
                identify_key(Subject::Id("new")),
                identify_key(Subject::Id("old@x.io"))
            ]
        );
        let identify =
            br#"{"type":"person","identifiers":{"id":"7"},"action":"identify","attributes":{}}"#;
        assert!(ON.keys_ended_by_raw(identify).is_empty());
    }
}
