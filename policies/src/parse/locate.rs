//! Line and column of a field path, for semantic errors found after
//! deserialisation.
//!
//! The document is replayed through serde_yaml_ng with a seed that walks down
//! the path and fails on purpose at the target node; serde_yaml_ng attaches
//! that node's position to the error. When the path does not exist (a missing
//! field), the deepest existing ancestor is reported. Using the same parser as
//! deserialisation means positions always agree with it.
//!
//! Must never: be used on a document that has not passed the guard pass (the
//! replay follows aliases).

use std::fmt;

use serde::de::{
    self, DeserializeSeed, EnumAccess, IgnoredAny, MapAccess, SeqAccess, VariantAccess, Visitor,
};

use crate::error::{FieldPath, Segment};

/// 1-based (line, column) of the node at `path`, or of its deepest existing
/// ancestor. A scalar is located at its value; a mapping or sequence at the
/// key that names it (its first line would point past the key).
pub fn locate(text: &str, path: &FieldPath) -> Option<(usize, usize)> {
    let found = replay(text, &path.0, false)?;
    if found.collection && matches!(path.0.last(), Some(Segment::Key(_))) {
        return replay(text, &path.0, true).map(|f| f.at).or(Some(found.at));
    }
    Some(found.at)
}

struct Found {
    at: (usize, usize),
    collection: bool,
}

fn replay(text: &str, rest: &[Segment], at_key: bool) -> Option<Found> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    match (Seek { rest, at_key }).deserialize(de) {
        Ok(()) => None,
        Err(e) => {
            let l = e.location()?;
            Some(Found {
                at: (l.line(), l.column()),
                collection: e.to_string().contains(HERE_COLLECTION),
            })
        }
    }
}

const HERE: &str = "located";
const HERE_COLLECTION: &str = "located-collection";

struct Seek<'p> {
    rest: &'p [Segment],
    /// Stop at the key of the last segment rather than at its value.
    at_key: bool,
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

macro_rules! here {
    ($($name:ident: $ty:ty),*) => {$(
        fn $name<E: de::Error>(self, _v: $ty) -> Result<(), E> {
            Err(E::custom(HERE))
        }
    )*};
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    here!(visit_bool: bool, visit_i64: i64, visit_i128: i128, visit_u64: u64, visit_u128: u128,
        visit_f64: f64, visit_str: &str, visit_bytes: &[u8]);

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(HERE))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(HERE))
    }
    fn visit_some<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let [Segment::Index(n), rest @ ..] = self.rest {
            for _ in 0..*n {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Err(de::Error::custom(HERE));
                }
            }
            seq.next_element_seed(Seek {
                rest,
                at_key: self.at_key,
            })?;
            return Err(de::Error::custom(HERE));
        }
        Err(de::Error::custom(HERE_COLLECTION))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match self.rest {
            [Segment::Key(want)] if self.at_key => {
                // Fails (with the key's position) when it reaches the key.
                while map.next_key_seed(StopAtKey { want })?.is_some() {
                    map.next_value::<IgnoredAny>()?;
                }
                Err(de::Error::custom(HERE))
            }
            [Segment::Key(want), rest @ ..] => {
                while let Some(key) = map.next_key_seed(KeyText)? {
                    if key.as_deref() == Some(want.as_str()) {
                        map.next_value_seed(Seek {
                            rest,
                            at_key: self.at_key,
                        })?;
                        break;
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Err(de::Error::custom(HERE))
            }
            _ => Err(de::Error::custom(HERE_COLLECTION)),
        }
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let (tag, variant) = data.variant_seed(KeyText)?;
        match self.rest {
            [Segment::Key(want), rest @ ..] if tag.as_deref() == Some(want.as_str()) => variant
                .newtype_variant_seed(Seek {
                    rest,
                    at_key: self.at_key,
                }),
            _ => variant.newtype_variant_seed(Seek {
                rest: &[],
                at_key: false,
            }),
        }
    }
}

/// A mapping key as text, or `None` for a non-scalar key.
struct KeyText;

impl<'de> DeserializeSeed<'de> for KeyText {
    type Value = Option<String>;
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Option<String>, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyText {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_owned()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// Reads one mapping key; fails on purpose when it is `want`.
struct StopAtKey<'w> {
    want: &'w str,
}

impl<'de> DeserializeSeed<'de> for StopAtKey<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StopAtKey<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if v == self.want {
            Err(E::custom(HERE))
        } else {
            Ok(())
        }
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.visit_str(&v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        KeyText.visit_seq(seq).map(drop)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        KeyText.visit_map(map).map(drop)
    }
}
