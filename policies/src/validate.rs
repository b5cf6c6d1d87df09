//! Semantic validation of a deserialised [`crate::Policy`].
