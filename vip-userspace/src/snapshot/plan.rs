//! The pure decisions around snapshots, with no I/O: file names, the
//! schedule's slots, whether the disk can hold the next one, which old ones to
//! prune, and whether a file's integrity hash holds.

use std::time::Duration;

use sha2::{Digest, Sha256};

/// Snapshot files are `etcd-snapshot-<UTC time>.db`; a file being written is
/// `.etcd-snapshot-<UTC time>.db.part` (hidden, and with another suffix, so
/// no tool that globs `*.db` ever picks up a half-written one).
pub const PREFIX: &str = "etcd-snapshot-";
pub const SUFFIX: &str = ".db";
pub const PART_SUFFIX: &str = ".part";

/// etcd appends the SHA-256 of the database it streamed as the last 32 bytes
/// of a snapshot (etcd `server/etcdserver/api/v3rpc/maintenance.go`:
/// `Snapshot` sends `h.Sum(nil)` after the db); `etcdctl snapshot restore`
/// checks it unless told `--skip-hash-check`.
pub const HASH_LEN: usize = 32;

/// `20261206T231502Z`, the UTC time of `unix` seconds (basic ISO 8601: sorts
/// as time does, and has no `:` that some filesystems and tools refuse).
pub fn stamp(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The snapshot file name for a snapshot stamped at `unix`.
pub fn file_name(unix: u64) -> String {
    format!("{PREFIX}{}{SUFFIX}", stamp(unix))
}

/// The unix time a snapshot file name carries, or `None` when it is not one
/// of vipd's snapshot names.
pub fn parse_name(name: &str) -> Option<u64> {
    let s = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    let days = days_from_civil(y as i64, mo, d);
    let t = u64::try_from(days).ok()? * 86_400 + h * 3600 + mi * 60 + se;
    (stamp(t) == s).then_some(t)
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (y, m, d).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The schedule: wall-clock periods of `interval` since the unix epoch, each
/// with one slot at `period start + offset`, where the offset (the jitter) is
/// derived from the period number alone. Every node computes the same slot
/// for the same period without talking to the others, so "who takes period
/// N's snapshot" is "whoever holds the VIP at slot N" (see `agent`), and a
/// snapshot's name (the period start) says which period it belongs to. The
/// jitter spreads clusters that share a storage target over the interval
/// instead of all snapshotting at midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub interval: Duration,
    pub jitter: Duration,
}

impl Schedule {
    fn interval_s(&self) -> u64 {
        self.interval.as_secs().max(1)
    }

    /// The period `unix` falls in.
    pub fn period(&self, unix: u64) -> u64 {
        unix / self.interval_s()
    }

    /// When period `n` starts (unix seconds).
    pub fn period_start(&self, n: u64) -> u64 {
        n * self.interval_s()
    }

    /// Period `n`'s slot (unix seconds): its start plus a jitter in
    /// `[0, jitter)` that is the same on every node (a SplitMix64 hash of
    /// `n`, not a random draw).
    pub fn slot(&self, n: u64) -> u64 {
        let j = self.jitter.as_secs().min(self.interval_s() - 1);
        let off = if j == 0 { 0 } else { splitmix64(n) % j };
        self.period_start(n) + off
    }

    /// The next slot at or after `unix`, with its period.
    pub fn next_slot(&self, unix: u64) -> (u64, u64) {
        let n = self.period(unix);
        if self.slot(n) >= unix {
            (n, self.slot(n))
        } else {
            (n + 1, self.slot(n + 1))
        }
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Refuse to start a snapshot the filesystem cannot take: the next one is
/// about the size of the previous, and a margin of as much again keeps the
/// disk from filling (etcd's own data directory often shares it).
/// `Err(needed)` in bytes.
pub fn space_check(free: u64, previous_size: Option<u64>) -> Result<(), u64> {
    match previous_size {
        Some(p) if free < p.saturating_mul(2) => Err(p.saturating_mul(2)),
        _ => Ok(()),
    }
}

/// A snapshot on disk, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDisk {
    pub name: String,
    /// The time its name carries (unix seconds).
    pub taken: u64,
    /// Whether its integrity hash held when last checked.
    pub intact: bool,
}

/// Retention: which snapshots to delete once a new one is verified. Only
/// intact snapshots count towards `keep` and only they are ever deleted: a
/// corrupt one is left for the operator to look at (it is reported) and
/// never takes the place of a good one. The newest intact snapshot is
/// always kept, whatever `max_age` says: an old snapshot beats none.
pub fn to_prune(
    disk: &[OnDisk],
    keep: Option<usize>,
    max_age: Option<Duration>,
    now: u64,
) -> Vec<String> {
    let mut intact: Vec<&OnDisk> = disk.iter().filter(|s| s.intact).collect();
    intact.sort_by(|a, b| b.taken.cmp(&a.taken).then_with(|| b.name.cmp(&a.name)));
    intact
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, s)| {
            keep.is_some_and(|k| *i >= k.max(1))
                || max_age.is_some_and(|a| now.saturating_sub(s.taken) > a.as_secs())
        })
        .map(|(_, s)| s.name.clone())
        .collect()
}

/// Whether a snapshot's trailing SHA-256 matches its database.
pub fn hash_holds(snapshot: &[u8]) -> bool {
    snapshot.len() > HASH_LEN && {
        let (db, sum) = snapshot.split_at(snapshot.len() - HASH_LEN);
        Sha256::digest(db).as_slice() == sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_as_time() {
        assert_eq!(stamp(0), "19700101T000000Z");
        // 2026-12-06 23:15:02 UTC
        assert_eq!(stamp(1_796_598_902), "20261206T231502Z");
        for t in [0, 951_782_400, 1_796_598_902, 4_102_444_799] {
            assert_eq!(parse_name(&file_name(t)), Some(t), "{t}");
        }
        assert!(file_name(1_000) < file_name(100_000));
        for bad in [
            "etcd-snapshot-20261306T000000Z.db",
            "etcd-snapshot-20261206T000000Z.db.part",
            ".etcd-snapshot-20261206T000000Z.db.part",
            "etcd-snapshot-20260231T000000Z.db",
            "etcd-snapshot-2026126T000000Z.db",
            "other.db",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn slots_are_one_per_period_and_the_same_everywhere() {
        let s = Schedule {
            interval: Duration::from_secs(86_400),
            jitter: Duration::from_secs(3600),
        };
        for n in 20_000..20_050 {
            let slot = s.slot(n);
            assert_eq!(s.period(slot), n, "slot {slot} stays in its period");
            assert!(slot - s.period_start(n) < 3600);
        }
        let (n, slot) = s.next_slot(20_000 * 86_400);
        assert_eq!((n, slot), (20_000, s.slot(20_000)));
        // Just after a slot, the next one is the next period's.
        assert_eq!(s.next_slot(s.slot(20_000) + 1).0, 20_001);
        // The jitter actually spreads: not every slot is at the start.
        assert!((0..50).any(|n| s.slot(n) != s.period_start(n)));
        let none = Schedule {
            jitter: Duration::ZERO,
            ..s
        };
        assert_eq!(none.slot(7), 7 * 86_400);
        // A jitter as long as the interval still keeps the slot inside it.
        let wide = Schedule {
            interval: Duration::from_secs(10),
            jitter: Duration::from_secs(10),
        };
        assert!((0..100).all(|n| wide.period(wide.slot(n)) == n));
    }

    #[test]
    fn space_needs_twice_the_previous_snapshot() {
        assert_eq!(space_check(100, None), Ok(()));
        assert_eq!(space_check(200, Some(100)), Ok(()));
        assert_eq!(space_check(199, Some(100)), Err(200));
    }

    fn disk(specs: &[(u64, bool)]) -> Vec<OnDisk> {
        specs
            .iter()
            .map(|&(t, intact)| OnDisk {
                name: file_name(t),
                taken: t,
                intact,
            })
            .collect()
    }

    #[test]
    fn retention_by_count_keeps_the_newest() {
        let d = disk(&[(1, true), (2, true), (3, true), (4, true)]);
        assert_eq!(
            to_prune(&d, Some(2), None, 10),
            vec![file_name(2), file_name(1)]
        );
        assert!(to_prune(&d, Some(4), None, 10).is_empty());
        // keep: 0 still keeps the new one.
        assert_eq!(to_prune(&d, Some(0), None, 10).len(), 3);
    }

    #[test]
    fn retention_by_age_never_removes_the_last_good_one() {
        let d = disk(&[(100, true), (200, true), (900, true)]);
        let day = Some(Duration::from_secs(500));
        assert_eq!(
            to_prune(&d, None, day, 1000),
            vec![file_name(200), file_name(100)]
        );
        assert!(to_prune(&d[..1], None, day, 10_000).is_empty());
        // Both limits: either one prunes.
        assert_eq!(to_prune(&d, Some(2), day, 650), vec![file_name(100)]);
    }

    #[test]
    fn a_corrupt_snapshot_neither_counts_nor_is_pruned() {
        // Newest intact, then a corrupt one, then two intact: keep 2 keeps
        // the newest and the intact one under the corrupt, and leaves the
        // corrupt one on disk.
        let d = disk(&[(1, true), (2, true), (3, false), (4, true)]);
        assert_eq!(to_prune(&d, Some(2), None, 10), vec![file_name(1)]);
        let d = disk(&[(1, false), (2, false)]);
        assert!(to_prune(&d, Some(1), Some(Duration::ZERO), 10).is_empty());
    }

    #[test]
    fn the_trailing_hash_is_checked() {
        let db = vec![7u8; 1024];
        let mut snap = db.clone();
        snap.extend(Sha256::digest(&db));
        assert!(hash_holds(&snap));
        snap[10] ^= 1;
        assert!(!hash_holds(&snap));
        assert!(!hash_holds(&[0u8; 32]));
    }
}
