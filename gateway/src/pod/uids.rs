//! UID/GID resolution for a sandbox pod: which UID and GID the agent and the
//! sidecar run as, and the pod's `fsGroup`.
//!
//! Order, per value: an explicit setting; else the namespace's OpenShift SCC
//! annotations ([`UID_RANGE_ANNOTATION`]: the agent gets the range's first
//! UID, the sidecar the first other UID of the same range;
//! [`SUPPLEMENTAL_GROUPS_ANNOTATION`], else the UID range: the agent's GID
//! and the `fsGroup`); else the defaults 1000 / 1337 (`palisade_api::defaults`).
//! The sidecar's GID is its UID unless set.
//!
//! Must never: fall back silently when an annotation is present but
//! malformed or too small (the SCC would reject the pod later, far from the
//! cause: the error names the annotation and its value), hand out UID or GID
//! 0, or give the agent the sidecar's UID or GID (the capture and the fence
//! exempt both: the agent would leave uncaptured).

use std::collections::BTreeMap;
use std::fmt;

use palisade_api::defaults::{AGENT_UID, SIDECAR_UID};

use crate::driver::plan::{Ids, Owner};

/// The namespace annotation OpenShift writes with the UIDs its restricted
/// SCCs allow (`1000650000/10000`).
pub const UID_RANGE_ANNOTATION: &str = "openshift.io/sa.scc.uid-range";
/// The namespace annotation with the allowed `fsGroup` / supplemental groups.
pub const SUPPLEMENTAL_GROUPS_ANNOTATION: &str = "openshift.io/sa.scc.supplemental-groups";

/// UIDs and GIDs the operator (or the sandbox record) set; `None` is derived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdSettings {
    pub agent_uid: Option<u32>,
    pub agent_gid: Option<u32>,
    pub sidecar_uid: Option<u32>,
    pub sidecar_gid: Option<u32>,
}

impl IdSettings {
    /// `self`, with the values `other` sets winning.
    pub fn overridden_by(self, other: IdSettings) -> IdSettings {
        IdSettings {
            agent_uid: other.agent_uid.or(self.agent_uid),
            agent_gid: other.agent_gid.or(self.agent_gid),
            sidecar_uid: other.sidecar_uid.or(self.sidecar_uid),
            sidecar_gid: other.sidecar_gid.or(self.sidecar_gid),
        }
    }
}

/// A block of IDs, `start` … `start + size - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub start: u32,
    pub size: u32,
}

impl Block {
    pub fn contains(self, id: u32) -> bool {
        id >= self.start && u64::from(id) < u64::from(self.start) + u64::from(self.size)
    }

    /// The last ID of the block.
    pub fn end(self) -> u32 {
        // `parse_block` guarantees start + size - 1 fits and size >= 1.
        self.start.saturating_add(self.size.saturating_sub(1))
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end())
    }
}

/// Where the resolved IDs came from (shown by `sandbox render` and in docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdSource {
    /// Every value was set explicitly or is a default.
    Settings,
    /// At least one value came from the namespace's SCC annotations.
    SccRange,
}

/// The resolved IDs of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedIds {
    pub ids: Ids,
    /// The pod's `fsGroup` (the agent's GID): the projected token and the
    /// mounted files are readable through it.
    pub fs_group: u32,
    pub source: IdSource,
}

/// Why no IDs could be resolved. The text names the annotation or setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    #[error(
        "namespace annotation {annotation}={value:?} is malformed: {reason} (expected START/SIZE \
         like 1000650000/10000, or START-END like 1000650000-1000659999)"
    )]
    Malformed {
        annotation: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "namespace annotation {annotation}={value:?} is too small: {reason}; give the namespace a \
         larger range or set the UIDs explicitly (--agent-uid, --sidecar-uid)"
    )]
    TooSmall {
        annotation: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(
        "{setting} {id} is outside the namespace's {annotation}={value:?} ({block}); the SCC would \
         reject the pod (`{field}: Invalid value: {id}: must be in the ranges: [{start}, {end}]`); \
         leave it unset to take one from the range"
    )]
    OutsideRange {
        setting: &'static str,
        id: u32,
        annotation: &'static str,
        value: String,
        block: Block,
        field: &'static str,
        start: u32,
        end: u32,
    },
    #[error("{setting} is 0 (root); {why}")]
    Root {
        setting: &'static str,
        why: &'static str,
    },
    #[error(
        "the agent and the sidecar would share {what} {id}: the capture and the fence exempt the \
         sidecar's {what}, so the agent's traffic would leave uncaptured; set {setting} to another value"
    )]
    Shared {
        what: &'static str,
        id: u32,
        setting: &'static str,
    },
}

/// Parse one block: `START/SIZE` or `START-END` (inclusive).
fn parse_block(annotation: &'static str, value: &str, text: &str) -> Result<Block, UidError> {
    let malformed = |reason: String| UidError::Malformed {
        annotation,
        value: value.to_owned(),
        reason,
    };
    let number = |s: &str, what: &str| -> Result<u32, UidError> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed(format!("{what} `{s}` is not a number")));
        }
        s.parse::<u32>()
            .map_err(|_| malformed(format!("{what} `{s}` is larger than 4294967295")))
    };
    let (start, size) = if let Some((start, size)) = text.split_once('/') {
        (number(start, "start")?, number(size, "size")?)
    } else if let Some((start, end)) = text.split_once('-') {
        let (start, end) = (number(start, "start")?, number(end, "end")?);
        if end < start {
            return Err(malformed(format!("end {end} is before start {start}")));
        }
        // end - start + 1 may be 2^32 (0-4294967295); too large anyway.
        let size = u64::from(end) - u64::from(start) + 1;
        let size = u32::try_from(size)
            .map_err(|_| malformed("the range covers more than 4294967295 IDs".to_owned()))?;
        (start, size)
    } else {
        return Err(malformed(format!(
            "`{}` has neither `/` nor `-`",
            text.trim()
        )));
    };
    if size == 0 {
        return Err(UidError::TooSmall {
            annotation,
            value: value.to_owned(),
            reason: "it holds no ID (size 0)",
        });
    }
    if u64::from(start) + u64::from(size) - 1 > u64::from(u32::MAX) {
        return Err(malformed(format!(
            "start {start} + size {size} runs past 4294967295"
        )));
    }
    if start == 0 {
        return Err(malformed(
            "the range starts at 0 (root); Palisade never runs the agent or the sidecar as root"
                .to_owned(),
        ));
    }
    Ok(Block { start, size })
}

/// `openshift.io/sa.scc.uid-range`: exactly one block.
pub fn parse_uid_range(value: &str) -> Result<Block, UidError> {
    if value.contains(',') {
        return Err(UidError::Malformed {
            annotation: UID_RANGE_ANNOTATION,
            value: value.to_owned(),
            reason: "a UID range is one block, not a list".to_owned(),
        });
    }
    let block = parse_block(UID_RANGE_ANNOTATION, value, value)?;
    if block.size < 2 {
        return Err(UidError::TooSmall {
            annotation: UID_RANGE_ANNOTATION,
            value: value.to_owned(),
            reason: "Palisade needs two UIDs of the range, the agent's and the sidecar's",
        });
    }
    Ok(block)
}

/// `openshift.io/sa.scc.supplemental-groups`: one block or a comma list of
/// blocks (each must parse); the first one is used.
pub fn parse_supplemental_groups(value: &str) -> Result<Block, UidError> {
    let mut first = None;
    for part in value.split(',') {
        let block = parse_block(SUPPLEMENTAL_GROUPS_ANNOTATION, value, part)?;
        first.get_or_insert(block);
    }
    first.ok_or_else(|| UidError::Malformed {
        annotation: SUPPLEMENTAL_GROUPS_ANNOTATION,
        value: value.to_owned(),
        reason: "empty".to_owned(),
    })
}

fn in_range(
    setting: &'static str,
    field: &'static str,
    id: u32,
    annotation: &'static str,
    value: &str,
    block: Block,
) -> Result<(), UidError> {
    if block.contains(id) {
        Ok(())
    } else {
        Err(UidError::OutsideRange {
            setting,
            id,
            annotation,
            value: value.to_owned(),
            block,
            field,
            start: block.start,
            end: block.end(),
        })
    }
}

/// Resolve the pod's IDs from `explicit` and the namespace's `annotations`
/// (see the module docs).
pub fn resolve(
    explicit: IdSettings,
    annotations: &BTreeMap<String, String>,
) -> Result<ResolvedIds, UidError> {
    let uid_range = annotations
        .get(UID_RANGE_ANNOTATION)
        .map(|v| parse_uid_range(v).map(|b| (v.as_str(), b)))
        .transpose()?;
    let groups = annotations
        .get(SUPPLEMENTAL_GROUPS_ANNOTATION)
        .map(|v| parse_supplemental_groups(v).map(|b| (v.as_str(), b)))
        .transpose()?;

    let agent_uid = explicit
        .agent_uid
        .or(uid_range.map(|(_, b)| b.start))
        .unwrap_or(AGENT_UID);
    // OpenShift takes fsGroup from the supplemental groups, else the UID range.
    let group_range = groups
        .map(|(v, b)| (SUPPLEMENTAL_GROUPS_ANNOTATION, v, b))
        .or(uid_range.map(|(v, b)| (UID_RANGE_ANNOTATION, v, b)));
    let agent_gid = explicit
        .agent_gid
        .or(group_range.map(|(_, _, b)| b.start))
        .unwrap_or(agent_uid);
    let sidecar_uid = match (explicit.sidecar_uid, uid_range) {
        (Some(uid), _) => uid,
        // The first UID of the range that is neither the agent's UID nor its
        // GID (the sidecar's GID is its UID); the range has at least two.
        (None, Some((_, b))) => (0..3u32)
            .filter_map(|i| b.start.checked_add(i))
            .filter(|id| b.contains(*id))
            .find(|id| *id != agent_uid && (explicit.sidecar_gid.is_some() || *id != agent_gid))
            .unwrap_or(if agent_uid == b.start {
                b.start + 1
            } else {
                b.start
            }),
        (None, None) => SIDECAR_UID,
    };
    let sidecar_gid = explicit.sidecar_gid.unwrap_or(sidecar_uid);

    for (setting, id, why) in [
        (
            "the agent UID (--agent-uid)",
            agent_uid,
            "the agent never runs as root",
        ),
        (
            "the sidecar UID (--sidecar-uid)",
            sidecar_uid,
            "the sidecar never runs as root",
        ),
        (
            "the agent GID (--agent-gid)",
            agent_gid,
            "palisade-shim refuses GID 0 (root group), and it would be the pod's fsGroup",
        ),
        (
            "the sidecar GID (--sidecar-gid)",
            sidecar_gid,
            "the capture exempts the sidecar's GID, so every process of group 0 would leave \
             uncaptured",
        ),
    ] {
        if id == 0 {
            return Err(UidError::Root { setting, why });
        }
    }
    if agent_uid == sidecar_uid {
        return Err(UidError::Shared {
            what: "UID",
            id: agent_uid,
            setting: if explicit.sidecar_uid.is_some() {
                "--sidecar-uid"
            } else {
                "--agent-uid"
            },
        });
    }
    if agent_gid == sidecar_gid {
        return Err(UidError::Shared {
            what: "GID",
            id: agent_gid,
            setting: if explicit.sidecar_gid.is_some() {
                "--sidecar-gid"
            } else {
                "--agent-gid"
            },
        });
    }
    if let Some((value, block)) = uid_range {
        in_range(
            "--agent-uid",
            "runAsUser",
            agent_uid,
            UID_RANGE_ANNOTATION,
            value,
            block,
        )?;
        in_range(
            "--sidecar-uid",
            "runAsUser",
            sidecar_uid,
            UID_RANGE_ANNOTATION,
            value,
            block,
        )?;
    }
    if let Some((annotation, value, block)) = group_range {
        in_range(
            "--agent-gid (the pod's fsGroup)",
            "fsGroup",
            agent_gid,
            annotation,
            value,
            block,
        )?;
    }
    let source = if uid_range.is_some() || groups.is_some() {
        IdSource::SccRange
    } else {
        IdSource::Settings
    };
    Ok(ResolvedIds {
        ids: Ids {
            sidecar: Owner {
                uid: sidecar_uid,
                gid: sidecar_gid,
            },
            agent: Owner {
                uid: agent_uid,
                gid: agent_gid,
            },
        },
        fs_group: agent_gid,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// (agent uid, agent gid, sidecar uid, sidecar gid, fsGroup)
    fn ids(r: &ResolvedIds) -> (u32, u32, u32, u32, u32) {
        (
            r.ids.agent.uid,
            r.ids.agent.gid,
            r.ids.sidecar.uid,
            r.ids.sidecar.gid,
            r.fs_group,
        )
    }

    /// Namespace annotations of a table row.
    type Annotations = &'static [(&'static str, &'static str)];
    /// agent UID, agent GID, sidecar UID, sidecar GID, fsGroup.
    type Expected = (u32, u32, u32, u32, u32);

    #[test]
    fn resolution_table() {
        let none = IdSettings::default();
        let cases: &[(&str, IdSettings, Annotations, Expected)] = &[
            ("defaults", none, &[], (1000, 1000, 1337, 1337, 1000)),
            (
                "start/size with supplemental groups",
                none,
                &[
                    (UID_RANGE_ANNOTATION, "1000650000/10000"),
                    (SUPPLEMENTAL_GROUPS_ANNOTATION, "1000650000/10000"),
                ],
                (1000650000, 1000650000, 1000650001, 1000650001, 1000650000),
            ),
            (
                "start-end",
                none,
                &[(UID_RANGE_ANNOTATION, "2000-2999")],
                (2000, 2000, 2001, 2001, 2000),
            ),
            (
                "the smallest usable range: two UIDs",
                none,
                &[(UID_RANGE_ANNOTATION, "5000/2")],
                (5000, 5000, 5001, 5001, 5000),
            ),
            (
                "supplemental groups from another block (list: the first)",
                none,
                &[
                    (UID_RANGE_ANNOTATION, "1000650000/10000"),
                    (
                        SUPPLEMENTAL_GROUPS_ANNOTATION,
                        "1000700000/10000,1000800000-1000800009",
                    ),
                ],
                (1000650000, 1000700000, 1000650001, 1000650001, 1000700000),
            ),
            (
                "supplemental groups alone",
                none,
                &[(SUPPLEMENTAL_GROUPS_ANNOTATION, "3000/100")],
                (1000, 3000, 1337, 1337, 3000),
            ),
            (
                "explicit agent UID in the range: the sidecar avoids the agent's GID",
                IdSettings {
                    agent_uid: Some(1000650005),
                    ..none
                },
                &[(UID_RANGE_ANNOTATION, "1000650000/10000")],
                (1000650005, 1000650000, 1000650001, 1000650001, 1000650000),
            ),
            (
                "explicit everything wins over the annotations",
                IdSettings {
                    agent_uid: Some(1000650010),
                    agent_gid: Some(1000650011),
                    sidecar_uid: Some(1000650012),
                    sidecar_gid: Some(1000650013),
                },
                &[(UID_RANGE_ANNOTATION, "1000650000/100")],
                (1000650010, 1000650011, 1000650012, 1000650013, 1000650011),
            ),
            (
                "explicit without annotations: GID = UID",
                IdSettings {
                    agent_uid: Some(4242),
                    sidecar_uid: Some(4343),
                    ..none
                },
                &[],
                (4242, 4242, 4343, 4343, 4242),
            ),
            (
                "whitespace around numbers",
                none,
                &[(UID_RANGE_ANNOTATION, " 7000 / 10 ")],
                (7000, 7000, 7001, 7001, 7000),
            ),
        ];
        for (name, explicit, annotations, want) in cases {
            let got =
                resolve(*explicit, &ns(annotations)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(ids(&got), *want, "{name}");
            let expect_source = if annotations.is_empty() {
                IdSource::Settings
            } else {
                IdSource::SccRange
            };
            assert_eq!(got.source, expect_source, "{name}");
        }
    }

    #[test]
    fn error_table() {
        let none = IdSettings::default();
        let cases: &[(&str, IdSettings, Annotations, &[&str])] = &[
            (
                "not a number",
                none,
                &[(UID_RANGE_ANNOTATION, "abc/10")],
                &[
                    UID_RANGE_ANNOTATION,
                    "\"abc/10\"",
                    "malformed",
                    "start `abc`",
                ],
            ),
            (
                "no separator",
                none,
                &[(UID_RANGE_ANNOTATION, "1000650000")],
                &[
                    UID_RANGE_ANNOTATION,
                    "\"1000650000\"",
                    "neither `/` nor `-`",
                ],
            ),
            (
                "negative size",
                none,
                &[(UID_RANGE_ANNOTATION, "1000/-5")],
                &[UID_RANGE_ANNOTATION, "size `-5` is not a number"],
            ),
            (
                "empty",
                none,
                &[(UID_RANGE_ANNOTATION, "")],
                &[UID_RANGE_ANNOTATION, "malformed"],
            ),
            (
                "too small: one UID",
                none,
                &[(UID_RANGE_ANNOTATION, "1000650000/1")],
                &[
                    UID_RANGE_ANNOTATION,
                    "\"1000650000/1\"",
                    "too small",
                    "two UIDs",
                ],
            ),
            (
                "too small: size 0",
                none,
                &[(UID_RANGE_ANNOTATION, "1000650000/0")],
                &[UID_RANGE_ANNOTATION, "too small", "size 0"],
            ),
            (
                "too small: start-end of one",
                none,
                &[(UID_RANGE_ANNOTATION, "5000-5000")],
                &[UID_RANGE_ANNOTATION, "too small"],
            ),
            (
                "end before start",
                none,
                &[(UID_RANGE_ANNOTATION, "5000-4000")],
                &[UID_RANGE_ANNOTATION, "end 4000 is before start 5000"],
            ),
            (
                "overflow",
                none,
                &[(UID_RANGE_ANNOTATION, "4294967290/10")],
                &[UID_RANGE_ANNOTATION, "runs past 4294967295"],
            ),
            (
                "number too large",
                none,
                &[(UID_RANGE_ANNOTATION, "99999999999/10")],
                &[UID_RANGE_ANNOTATION, "larger than 4294967295"],
            ),
            (
                "range at root",
                none,
                &[(UID_RANGE_ANNOTATION, "0/10000")],
                &[UID_RANGE_ANNOTATION, "starts at 0"],
            ),
            (
                "a list as UID range",
                none,
                &[(UID_RANGE_ANNOTATION, "1000/10,2000/10")],
                &[UID_RANGE_ANNOTATION, "one block"],
            ),
            (
                "one bad block in the supplemental groups",
                none,
                &[(SUPPLEMENTAL_GROUPS_ANNOTATION, "1000/10,x")],
                &[SUPPLEMENTAL_GROUPS_ANNOTATION, "\"1000/10,x\"", "malformed"],
            ),
            (
                "supplemental groups of size 0",
                none,
                &[(SUPPLEMENTAL_GROUPS_ANNOTATION, "1000/0")],
                &[SUPPLEMENTAL_GROUPS_ANNOTATION, "too small"],
            ),
            (
                "explicit UID outside the range",
                IdSettings {
                    sidecar_uid: Some(1337),
                    ..none
                },
                &[(UID_RANGE_ANNOTATION, "1000650000/10000")],
                &[
                    "--sidecar-uid 1337",
                    UID_RANGE_ANNOTATION,
                    "runAsUser: Invalid value: 1337: must be in the ranges: [1000650000, 1000659999]",
                ],
            ),
            (
                "explicit GID outside the supplemental groups",
                IdSettings {
                    agent_gid: Some(1000),
                    ..none
                },
                &[
                    (UID_RANGE_ANNOTATION, "1000650000/10000"),
                    (SUPPLEMENTAL_GROUPS_ANNOTATION, "1000650000/10000"),
                ],
                &["fsGroup", SUPPLEMENTAL_GROUPS_ANNOTATION, "1000"],
            ),
            (
                "agent UID 0",
                IdSettings {
                    agent_uid: Some(0),
                    ..none
                },
                &[],
                &["agent UID", "root"],
            ),
            (
                "sidecar UID 0",
                IdSettings {
                    sidecar_uid: Some(0),
                    ..none
                },
                &[],
                &["sidecar UID", "root"],
            ),
            (
                "agent GID 0",
                IdSettings {
                    agent_gid: Some(0),
                    ..none
                },
                &[],
                &["agent GID", "palisade-shim refuses GID 0"],
            ),
            (
                "sidecar GID 0",
                IdSettings {
                    sidecar_gid: Some(0),
                    ..none
                },
                &[],
                &["sidecar GID", "group 0 would leave uncaptured"],
            ),
            (
                "same UID",
                IdSettings {
                    agent_uid: Some(1337),
                    ..none
                },
                &[],
                &["share UID 1337", "uncaptured"],
            ),
            (
                "same GID",
                IdSettings {
                    agent_gid: Some(1337),
                    ..none
                },
                &[],
                &["share GID 1337", "--agent-gid"],
            ),
        ];
        for (name, explicit, annotations, needles) in cases {
            let err = resolve(*explicit, &ns(annotations))
                .map(|r| ids(&r))
                .expect_err(name);
            let text = err.to_string();
            for needle in *needles {
                assert!(text.contains(needle), "{name}: `{needle}` not in: {text}");
            }
        }
    }

    #[test]
    fn other_annotations_are_ignored() {
        let got = resolve(
            IdSettings::default(),
            &ns(&[("openshift.io/sa.scc.mcs", "s0:c26,c5")]),
        )
        .unwrap();
        assert_eq!(ids(&got), (1000, 1000, 1337, 1337, 1000));
    }

    #[test]
    fn blocks_know_their_bounds() {
        let b = parse_uid_range("10/5").unwrap();
        assert!(b.contains(10) && b.contains(14) && !b.contains(15) && !b.contains(9));
        assert_eq!(b.to_string(), "10-14");
        let top = parse_uid_range("4294967294/2").unwrap();
        assert!(top.contains(u32::MAX));
        assert_eq!(top.end(), u32::MAX);
    }
}
