//! The first pass over a document: walks every YAML node (following aliases)
//! without building anything, and stops as soon as the document nests too
//! deeply or expands to too many nodes. Only after this pass succeeds is the
//! document deserialised into the typed model, so YAML bombs (aliases of
//! aliases) and deeply nested input are refused at a bounded cost.
//!
//! It also records `methods: []` written out explicitly, which the typed model
//! cannot tell apart from an absent list.
//!
//! Must never: allocate in proportion to alias expansion, or recurse deeper
//! than [`MAX_DEPTH`].

use std::fmt;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

use crate::error::FieldPath;

/// Deepest nesting of mappings and sequences accepted. The deepest legal
/// field (`spec.credentials.NAME.from.tokenGrant.scopes[0]`) is at depth 7.
pub const MAX_DEPTH: usize = 16;
/// Most YAML nodes (scalars, sequences, mappings; aliases counted expanded).
pub const MAX_NODES: usize = 100_000;

/// What the guard pass learnt about an accepted document.
#[derive(Debug, Default)]
pub struct Findings {
    /// Paths of `methods` keys written with an empty list.
    pub explicit_empty_methods: Vec<FieldPath>,
}

/// Why the guard pass refused a document; the serde error carries the location.
#[derive(Debug)]
pub enum Refusal {
    TooDeep(FieldPath),
    TooManyNodes(FieldPath),
}

#[derive(Debug, Default)]
struct State {
    nodes: usize,
    path: Vec<crate::error::Segment>,
    findings: Findings,
    refusal: Option<Refusal>,
}

/// Walk the document. `Err` carries the parser's error (with its location);
/// when the guard itself refused, `refusal` says why.
pub fn walk<'de, D: de::Deserializer<'de>>(de: D) -> (Result<Findings, D::Error>, Option<Refusal>) {
    let mut state = State::default();
    let result = NodeSeed {
        state: &mut state,
        depth: 0,
    }
    .deserialize(de);
    let refusal = state.refusal.take();
    (result.map(|()| state.findings), refusal)
}

struct NodeSeed<'s> {
    state: &'s mut State,
    depth: usize,
}

impl NodeSeed<'_> {
    fn count<E: de::Error>(&mut self) -> Result<(), E> {
        self.state.nodes += 1;
        if self.state.nodes > MAX_NODES {
            self.state.refusal = Some(Refusal::TooManyNodes(FieldPath(self.state.path.clone())));
            return Err(E::custom("too many nodes"));
        }
        Ok(())
    }
    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        self.count()?;
        if self.depth >= MAX_DEPTH {
            self.state.refusal = Some(Refusal::TooDeep(FieldPath(self.state.path.clone())));
            return Err(E::custom("nested too deeply"));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

macro_rules! scalar {
    ($($name:ident: $ty:ty),*) => {$(
        fn $name<E: de::Error>(mut self, _v: $ty) -> Result<(), E> {
            self.count()
        }
    )*};
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    scalar!(visit_bool: bool, visit_i64: i64, visit_i128: i128, visit_u64: u64, visit_u128: u128,
        visit_f64: f64, visit_str: &str, visit_bytes: &[u8]);

    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        self.count()
    }
    fn visit_none<E: de::Error>(mut self) -> Result<(), E> {
        self.count()
    }
    fn visit_some<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.enter()?;
        let mut index = 0;
        loop {
            self.state.path.push(crate::error::Segment::Index(index));
            let next = seq.next_element_seed(NodeSeed {
                state: &mut *self.state,
                depth: self.depth + 1,
            });
            self.state.path.pop();
            if next?.is_none() {
                break;
            }
            index += 1;
        }
        if index == 0
            && matches!(self.state.path.last(), Some(crate::error::Segment::Key(k)) if k == "methods")
        {
            self.state
                .findings
                .explicit_empty_methods
                .push(FieldPath(self.state.path.clone()));
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.enter()?;
        while let Some(key) = map.next_key_seed(KeySeed {
            state: &mut *self.state,
            depth: self.depth + 1,
        })? {
            self.state.path.push(crate::error::Segment::Key(key));
            let value = map.next_value_seed(NodeSeed {
                state: &mut *self.state,
                depth: self.depth + 1,
            });
            self.state.path.pop();
            value?;
        }
        Ok(())
    }

    fn visit_enum<A: EnumAccess<'de>>(mut self, data: A) -> Result<(), A::Error> {
        // A tagged node (`!secret {...}`): the tag, then its content.
        self.enter()?;
        let (tag, variant) = data.variant_seed(KeySeed {
            state: &mut *self.state,
            depth: self.depth + 1,
        })?;
        self.state.path.push(crate::error::Segment::Key(tag));
        let result = variant.newtype_variant_seed(NodeSeed {
            state: &mut *self.state,
            depth: self.depth + 1,
        });
        self.state.path.pop();
        result
    }
}

/// A mapping key: counted like any node; scalars become the path segment.
struct KeySeed<'s> {
    state: &'s mut State,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<String, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        NodeSeed {
            state: self.state,
            depth: self.depth,
        }
        .count()?;
        Ok(v.to_owned())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        self.visit_str("~")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<String, A::Error> {
        NodeSeed {
            state: self.state,
            depth: self.depth,
        }
        .visit_seq(seq)?;
        Ok("?".to_owned())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<String, A::Error> {
        NodeSeed {
            state: self.state,
            depth: self.depth,
        }
        .visit_map(map)?;
        Ok("?".to_owned())
    }
}
